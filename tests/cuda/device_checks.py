"""Checks shared by the CUDA-simulator tests, which compare each CUDA twin with its CPU twin."""

from numba import cuda

#: Float kernels may differ by a few float32 ulps on a real GPU (fused multiply-adds).
FLOAT_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def assert_on_device(array):
    """Outputs are allocated as the same kind of GPU array as the inputs."""
    assert type(array) is type(cuda.device_array(1))
