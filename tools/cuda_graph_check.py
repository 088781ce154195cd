"""Whether the deconvolution's CUDA graphs work on this GPU, and what one evaluation costs.

    python tools/cuda_graph_check.py [--size 224] [--repeat 20]

For each deconvolution sub-network (levels 2, 3, 4, 5: VGG-19's widths, random
He-initialised weights, the level sizes of a ``--size`` px square image), one
loss-and-gradient evaluation is captured as a CUDA graph as ``deconvolve`` does it (the
eager pass as reference, the capture, the first replay compared with the reference),
then timed both ways, each timing between two device synchronisations. One line per
level, e.g.::

    level 5: graph used; first replay vs eager: loss 0.0e+00, gradient 3.1e-07 relative
      (tolerance 1e-04); evaluation 10.412 ms eager, 9.873 ms graph (20 calls each)

or ``level 5: graph NOT used: <why>``. A notice of the fallback, if any, goes to stderr.
Exit status: 0 when every level used its graph, 1 when one did not, 2 without a usable
GPU.
"""

from __future__ import annotations

from diva_numba.environment import apply_runtime_defaults

# Before NumPy and Numba load, as the command line does.
apply_runtime_defaults()

import argparse  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from diva_numba.gpu.device import cuda_status  # noqa: E402
from diva_numba.models import vgg  # noqa: E402
from diva_numba.network.subnetwork import SubNetwork  # noqa: E402


def random_weights(rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """He-initialised convs of VGG-19 (the GEMMs' time does not depend on the values)."""
    weights, in_channels = {}, 3
    for name in vgg.CONV_LAYERS:
        out_channels = vgg.CONV_CHANNELS[name]
        scale = np.float32(math.sqrt(2.0 / (9 * in_channels)))
        weight = rng.standard_normal((out_channels, in_channels, 3, 3), dtype=np.float32)
        weights[name] = (weight * scale, np.zeros(out_channels, dtype=np.float32))
        in_channels = out_channels
    return weights


def seconds_per_call(cupy, call, repeat: int) -> float:
    call()
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    cupy.cuda.Device().synchronize()
    return (time.perf_counter() - start) / repeat


def check_level(cupy, weights, level: int, size: int, repeat: int) -> tuple[bool, str]:
    network = SubNetwork(weights, level - 2, level)
    rng = np.random.default_rng(level)
    height, width = vgg.level_shape(size, size, level - 2)
    x = cupy.asarray(
        np.maximum(rng.standard_normal((network.in_channels, height, width)), 0).astype(np.float32)
    )
    target = cupy.asarray(rng.uniform(0, 1, network.output_shape(height, width)).astype("f4"))
    key = object()

    def graphed():
        return network.loss_and_gradient(x, target, cuda_graph=True, target_key=key)

    graphed()  # the capture and the check of its first replay
    if network.graph_problem:
        return False, f"level {level}: graph NOT used: {network.graph_problem}"
    eager = seconds_per_call(cupy, lambda: network.loss_and_gradient(x, target), repeat)
    graph = seconds_per_call(cupy, graphed, repeat)
    return True, (
        f"level {level}: graph used; first replay vs eager: {network.graph_check}; "
        f"evaluation {eager * 1e3:.3f} ms eager, {graph * 1e3:.3f} ms graph "
        f"({repeat} calls each, {height}x{width} input)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="image side in px (default 224)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per way (default 20)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    ok, reason = cuda_status()
    if not ok:
        print(f"no usable GPU: {reason}")
        return 2
    import cupy

    weights = random_weights(np.random.default_rng(0))
    used = True
    for level in (2, 3, 4, 5):
        level_used, line = check_level(cupy, weights, level, args.size, args.repeat)
        print(line, flush=True)
        used &= level_used
    print("CUDA graphs: " + ("used at every level" if used else "NOT used at every level"))
    return 0 if used else 1


if __name__ == "__main__":
    sys.exit(main())
