"""Numba kernels of the analogy, each with a CUDA and a CPU target.

The twin pattern, and how to add a kernel: docs/DESIGN.md section 5.

Conventions used by every module here:

* feature maps are float32 ``(C, H, W)`` (channel first, C-contiguous);
* nearest-neighbour fields are int32 ``(H, W, 2)`` holding absolute ``(y, x)``
  positions in the other map;
* every public function dispatches on its arrays: GPU arrays (CuPy, or anything
  with ``__cuda_array_interface__``) run the CUDA kernel, NumPy arrays the CPU
  twin; the ``*_cpu`` and ``*_cuda`` variants can be called directly.
"""
