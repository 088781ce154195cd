"""No low-occupancy warning from the real CUDA target once the runtime defaults are set.

Numba's CUDA target (numba-cuda's too, with a warning class of its own) warns when a
launch is configured with fewer than 128 blocks, which the pipeline's small maps do by
design. Configuring a launch needs no GPU, so this runs in a fresh interpreter on the
real target (the test session runs the simulator, which never warns), with warnings
turned into errors.
"""

from __future__ import annotations

import os
import subprocess
import sys

from diva_numba.environment import RUNTIME_DEFAULTS

VARIABLE = "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"
CONFIGURE_ONE_BLOCK = """
from diva_numba.environment import apply_runtime_defaults
apply_runtime_defaults()
import warnings
warnings.simplefilter("error")
from numba import cuda

@cuda.jit
def kernel(x):
    pass

kernel[1, 32]
print("configured")
"""


def configure_one_block(**variables):
    env = {k: v for k, v in os.environ.items() if k not in RUNTIME_DEFAULTS}
    env.update(NUMBA_ENABLE_CUDASIM="0", **variables)
    return subprocess.run(
        [sys.executable, "-c", CONFIGURE_ONE_BLOCK],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_one_block_launch_does_not_warn_with_the_runtime_defaults():
    done = configure_one_block()
    assert done.returncode == 0 and done.stdout.strip() == "configured", done.stderr[-3000:]


def test_the_users_own_setting_is_kept():
    done = configure_one_block(**{VARIABLE: "1"})
    assert done.returncode != 0
    assert "Grid size 1 will likely result in GPU under-utilization" in done.stderr
