"""Neural style on the CUDA code path, under the simulator and the CuPy stand-in.

The loss and its gradient, and a short optimisation, run on a CUDA
:class:`~diva_numba.device.Device` with the tiny model and are compared with the CPU
path's. The stand-in refuses implicit conversions to NumPy, so a hidden host round
trip fails here; an evaluation's transfers are counted: the optimiser reads its scalar
register once per evaluation and nothing else moves.
"""

import cupy_standin
import cv2
import numpy as np
import pytest
from clips import photo
from numba.core import config

from diva_numba.gpu.device import to_device
from diva_numba.image_analogy.deep_analogy import AnalogyModel
from diva_numba.neural_style.params import NeuralStyleParams
from diva_numba.neural_style.styler import NeuralStyler
from diva_numba.optim.lbfgs import LBFGSParams, minimize_lbfgs

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(
        not config.ENABLE_CUDASIM, reason="the CuPy stand-in runs under the CUDA simulator only"
    ),
]


def _stylers(gpu, cpu, tiny_model, params):
    device, counters = gpu
    style = np.ascontiguousarray(cv2.applyColorMap(photo()[:20, :24, 1], cv2.COLORMAP_JET))
    return (
        NeuralStyler(AnalogyModel(tiny_model, cpu), style, params),
        NeuralStyler(AnalogyModel(tiny_model, device), style, params),
        counters,
    )


def test_the_loss_on_the_gpu_matches_the_cpu(gpu, cpu, tiny_model, rng):
    params = NeuralStyleParams(tv_weight=0.5, temporal_weight=50.0)
    on_cpu, on_gpu, counters = _stylers(gpu, cpu, tiny_model, params)
    frame = np.ascontiguousarray(photo()[100:117, 200:223])
    warped = rng.normal(0, 30, (3, 17, 23)).astype(np.float32)
    weight = (rng.uniform(size=(17, 23)) > 0.3).astype(np.float32)
    step = rng.normal(0, 5, (3, 17, 23)).astype(np.float32)
    results = []
    for styler in (on_cpu, on_gpu):
        content = styler.preprocess(frame)
        styler.loss.set_content(content)
        device = styler.device
        styler.loss.set_temporal([(to_device(warped, device), to_device(weight, device))])
        x = content + to_device(step, device)
        with cupy_standin.counting(counters) as used:
            loss, grad = styler.loss(x)
        results.append((loss, cupy_standin.asnumpy(grad) if device.is_cuda else grad.copy()))
        if device.is_cuda:
            assert used.transfer_count == 0  # the loss stays on the device
            assert loss.shape == (1,)
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = results
    assert float(cupy_standin.asnumpy(gpu_loss)[0]) == pytest.approx(cpu_loss, rel=1e-5)
    scale = np.abs(cpu_grad).max()
    np.testing.assert_allclose(gpu_grad, cpu_grad, atol=1e-5 * scale)


def test_a_short_run_on_the_gpu_matches_the_cpu(gpu, cpu, tiny_model):
    params = NeuralStyleParams(iterations=3)
    on_cpu, on_gpu, counters = _stylers(gpu, cpu, tiny_model, params)
    frame = np.ascontiguousarray(photo()[100:116, 200:224])
    results = []
    for styler in (on_cpu, on_gpu):
        content = styler.preprocess(frame)
        with cupy_standin.counting(counters) as used:
            result = styler.optimise(content, styler.start(content), iterations=3)
        results.append(result)
    cpu_result, gpu_result = results
    assert gpu_result.lbfgs.iterations == cpu_result.lbfgs.iterations == 3
    assert gpu_result.lbfgs.losses[-1] < gpu_result.lbfgs.losses[0]
    np.testing.assert_allclose(gpu_result.lbfgs.losses, cpu_result.lbfgs.losses, rtol=1e-4)
    np.testing.assert_allclose(gpu_result.rgb, cpu_result.rgb, atol=0.05)
    # One read of the optimiser's register per evaluation, the result's download aside.
    assert used.download_count <= gpu_result.lbfgs.evaluations + 1
    assert used.numba_device_arrays == 0


def test_the_gpu_objective_feeds_the_optimiser_without_hidden_transfers(gpu, cpu, tiny_model):
    _, on_gpu, counters = _stylers(gpu, cpu, tiny_model, NeuralStyleParams())
    content = on_gpu.preprocess(np.ascontiguousarray(photo()[100:116, 200:224]))
    on_gpu.loss.set_content(content)
    with cupy_standin.counting(counters) as used:
        result = minimize_lbfgs(on_gpu.loss, content, params=LBFGSParams(max_iterations=2))
    assert result.evaluations >= 2
    assert used.upload_count == 0
