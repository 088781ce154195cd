"""Numba kernels of the analogy, each with a CUDA and a CPU target.

The twin pattern, and how to add a kernel: docs/DESIGN.md section 5.

Conventions used by every module here:

* feature maps are float32 ``(C, H, W)`` (channel first, C-contiguous);
* nearest-neighbour fields are int32 ``(H, W, 2)`` holding absolute ``(y, x)``
  positions in the other map;
* one dispatch style: every public kernel ``name`` is three functions. ``name``
  checks its arguments and runs ``name_cuda`` when its arrays are on the GPU
  (CuPy, or anything with ``__cuda_array_interface__``), ``name_cpu`` when they
  are NumPy; the twins take the same arguments (or, in ``lbfgs_ops``, the ones
  ``name`` packed) and can be called directly. Why this style: the pipeline
  above calls ``name`` and never asks where its arrays live, while the tests
  pin a target by calling a twin (the CUDA twin under the simulator against the
  CPU one), and the dispatch is one visible ``if`` per kernel, not a registry
  to follow. A kernel of several passes (``patchmatch``) writes its driver once
  over a private target object holding each twin's launches.
  ``tests/test_kernel_twins.py`` holds every module to this.
"""
