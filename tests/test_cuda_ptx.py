"""Every CUDA kernel of the kernels package compiles to PTX for compute capability 9.0.

The CUDA simulator runs kernels as Python, so it cannot catch what only Numba's
CUDA compiler rejects (a builtin without a CUDA lowering, a float where an int is
needed, a type that cannot be unified). This test compiles every kernel with the
real CUDA target and libNVVM, which needs no GPU, in a subprocess started without
``NUMBA_ENABLE_CUDASIM`` (the test session runs under the simulator). When a PTX
assembler (``ptxas``) is found, the PTX is also assembled for sm_90.

Signatures come from the code itself, not from a table: each kernel module has an
*exercise* below that calls its public functions on tiny arrays which pose as CuPy
arrays (NumPy arrays behind a stand-in ``cupy`` module), with kernel launches
intercepted so that nothing runs. Every launch records its argument types as the
real CUDA dispatcher types them (``CUDADispatcher.typeof_pyval`` on the stand-in
arrays, which Numba, as for CuPy, can only type through their
``__cuda_array_interface__``); each distinct (kernel, argument types) pair is then
compiled. A kernel that no exercise launches fails the test, so a new kernel cannot
slip through untested; so does a launch the real target cannot type (a tuple of CuPy
arrays: numba issue 8483) or a host array reaching a kernel (Numba would copy it to
the device and back at every launch).

Kernels compiled with float32 arrays must not do float64 arithmetic: a ``0.0``
literal, a Python float argument or a float64 constant promotes the maths to float64,
which runs at a fraction of the float32 rate on most GPUs. The PTX of each such
signature is scanned for float64 instructions (moves, loads and stores aside), and
the Python lines they come from are reported; :data:`FLOAT64_BY_DESIGN` lists the
kernels whose float64 is deliberate, with the reason.

Run this file as a script to print the JSON report the test reads.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import types

import numpy as np
import pytest

COMPUTE_CAPABILITY = (9, 0)
_ARCH = f"sm_{COMPUTE_CAPABILITY[0]}{COMPUTE_CAPABILITY[1]}"
#: Toolkit locations tried when Numba finds no libNVVM on its own.
_TOOLKIT_GLOBS = ("/usr/local/cuda", "/usr/local/cuda-*", "/opt/cuda", "/opt/nvidia/cuda*")


# =========================================================================== compiler side
# Everything below up to the tests runs in the subprocess.


class _FakeGpuArray(np.ndarray):
    """A host array that the kernels package takes for a CuPy array.

    Numba's typing sees it as it sees a CuPy array: :func:`_type_like_cupy` removes
    the NumPy typing it would inherit, so only its ``__cuda_array_interface__`` (laid
    out as CuPy's: no strides when C-contiguous, no stream) is left to type it by.
    """

    __module__ = "cupy"

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ctypes.data, False),
            "strides": None if self.flags.c_contiguous else self.strides,
            "version": 3,
        }


def gpu(array):
    """``array`` as a stand-in GPU array."""
    return np.ascontiguousarray(array).view(_FakeGpuArray)


def _fake_cupy_module():
    """A ``cupy`` module whose functions are NumPy's, returning stand-in GPU arrays."""

    def on_fake_gpu(function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            if not isinstance(result, np.ndarray):
                return result
            # CuPy copies host data to new, writable device memory.
            return (result if result.flags.writeable else result.copy()).view(_FakeGpuArray)

        return wrapper

    module = types.ModuleType("cupy")
    module.ndarray = _FakeGpuArray
    # No kernel runs, so "uninitialised" buffers are zeros: host code reading them
    # (matmul of the network) then computes on numbers instead of garbage.
    module.empty = on_fake_gpu(np.zeros)

    def attribute(name):
        if name.startswith("_"):
            raise AttributeError(name)
        return on_fake_gpu(getattr(np, name))

    module.__getattr__ = attribute
    return module


def _type_like_cupy():
    """Make Numba type the stand-in arrays as CuPy's, without a GPU.

    * Numba's ``typeof`` has no rule for CuPy arrays (no buffer protocol, no
      ``_numba_type_``), so the CUDA dispatcher falls back to
      ``cuda.as_cuda_array(value)`` and types the device array built from the
      ``__cuda_array_interface__``. The stand-ins are NumPy arrays underneath, so
      their inherited NumPy rule is overridden with "no rule", as for CuPy. A tuple
      of them is typed element by element with ``typeof`` alone, which then fails,
      exactly as a tuple of CuPy arrays fails on a real GPU (numba issue 8483).
    * Building that device array asks the CUDA driver for a context (the
      ``require_context`` decorator, ``current_context``) and for the device pointer;
      with no GPU, the decorator is skipped, the context is None and the pointer is
      kept as it is. Everything else (shape, strides, layout, the array's Numba type)
      is Numba's own code.
    """
    from numba.core.typing.typeof import typeof_impl
    from numba.cuda import api
    from numba.cuda.cudadrv import driver

    typeof_impl.register(_FakeGpuArray)(lambda value, context: None)
    api.from_cuda_array_interface = api.from_cuda_array_interface.__wrapped__
    api.current_context = lambda: None
    driver.get_devptr_for_active_ctx = lambda pointer: pointer


class _TypeRecordingLaunch:
    """Stands in for ``kernel[grid, block]``: records the argument types, runs nothing.

    The types are the CUDA dispatcher's own (``typeof_pyval``, what a real launch
    uses for every argument its C fast path does not know). An argument it cannot
    type, or a host array, is recorded as a launch problem instead.
    """

    def __init__(self, kernel, launches, problems):
        self._kernel = kernel
        self._launches = launches
        self._problems = problems

    def __call__(self, *args):
        argument_types = []
        for position, arg in enumerate(args):
            where = f"argument {position} ({_describe_value(arg)})"
            if isinstance(arg, tuple) and _holds_gpu_array(arg):
                # Also when this Numba could type it: the releases the project allows
                # (numba's own CUDA target, numba-cuda before 0.23) cannot.
                self._problems.setdefault(self._kernel, set()).add(
                    f"{where}: a tuple of GPU arrays; pass each array as its own "
                    "argument (numba issue 8483)"
                )
            if type(arg) is np.ndarray or _holds_host_array(arg):
                self._problems.setdefault(self._kernel, set()).add(
                    f"{where}: a host array reaches the kernel (Numba copies it to the "
                    "device and back at every launch); upload it once"
                )
            try:
                argument_types.append(self._kernel.typeof_pyval(arg))
            except Exception as exc:
                self._problems.setdefault(self._kernel, set()).add(
                    f"{where}: the CUDA dispatcher cannot type it: "
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                )
                return
        self._launches.setdefault(self._kernel, set()).add(tuple(argument_types))


def _holds_gpu_array(value):
    return any(
        isinstance(item, _FakeGpuArray)
        or bool(getattr(item, "__cuda_ndarray__", False))
        or (isinstance(item, tuple) and _holds_gpu_array(item))
        for item in value
    )


def _holds_host_array(value):
    return isinstance(value, tuple) and any(
        type(item) is np.ndarray or _holds_host_array(item) for item in value
    )


def _describe_value(value):
    if isinstance(value, tuple):
        return "tuple of " + ", ".join(_describe_value(item) for item in value)
    if isinstance(value, np.ndarray):
        kind = "stand-in CuPy array" if isinstance(value, _FakeGpuArray) else "NumPy array"
        return f"{kind} {value.dtype} {value.shape}"
    return type(value).__name__


def _random_features(shape, rng):
    return gpu(np.maximum(rng.standard_normal(shape), 0).astype(np.float32))


def _random_field(shape, target_shape, rng):
    ys = rng.integers(0, target_shape[0], size=shape)
    xs = rng.integers(0, target_shape[1], size=shape)
    return np.stack([ys, xs], axis=-1).astype(np.int32)


def _exercise_normalize(rng):
    from diva_numba.kernels import normalize

    features = _random_features((4, 5, 6), rng)
    normalize.normalize_features(features)
    mask = normalize.response_mask(features, kind="sigmoid")
    normalize.response_mask(features, kind="step")
    normalize.blend(features, features, mask, alpha=0.5)
    normalize.blend(features, np.asarray(features), np.asarray(mask), alpha=0.5)


def _exercise_voting(rng):
    from diva_numba.kernels import voting

    source = _random_features((3, 5, 6), rng)
    field = _random_field((4, 4), (5, 6), rng)
    voting.vote(source, gpu(field), patch_size=3)
    voting.vote(source, field, patch_size=5)


def _exercise_nnf_resample(rng):
    from diva_numba.kernels import nnf_resample

    field = gpu(_random_field((4, 5), (4, 5), rng))
    flow = rng.uniform(-2, 2, size=(4, 5, 2)).astype(np.float32)
    nnf_resample.upsample_field(field, target_shape=(8, 10), source_shape=(8, 10))
    nnf_resample.pull_field(field, flow, source_shape=(4, 5))
    nnf_resample.pull_field(field, gpu(flow), source_shape=(4, 5))
    nnf_resample.push_field_targets(field, flow, frame_shape=(4, 5))


def _exercise_patch_distance(rng):
    from diva_numba.kernels import patch_distance

    maps = [_random_features((4, 5, 6), rng) for _ in range(4)]
    field = _random_field((5, 6), (5, 6), rng)
    patch_distance.patch_distance(*maps, gpu(field), patch_size=3)
    patch_distance.patch_distance(*maps, field, patch_size=5)


def _exercise_patchmatch(rng):
    from diva_numba.kernels import patchmatch

    maps = [_random_features((4, 5, 6), rng) for _ in range(4)]
    params = patchmatch.PatchMatchParams(iterations=1, search_radius=2)
    patchmatch.patchmatch(*maps, params=params)
    patchmatch.patchmatch(
        *maps,
        init_field=gpu(_random_field((5, 6), (5, 6), rng)),
        params=params,
        refine_mask=np.ones((5, 6), dtype=bool),
    )


def _exercise_im2col(rng):
    from diva_numba.kernels import activations, im2col

    for dtype in (np.float32, np.float64):
        image = gpu(rng.standard_normal((2, 4, 5)).astype(dtype))
        bias = gpu(rng.standard_normal(2).astype(dtype))
        columns = im2col.im2col(image)
        im2col.im2col(image, bias=bias)
        im2col.col2im(columns, 4, 5)
        im2col.col2im(columns, 4, 5, pre_activation=image, bias=bias)
        pre = gpu(rng.standard_normal((2, 7, 9)).astype(dtype))
        pooled, argmax = activations.maxpool_forward(pre, bias=bias)
        im2col.col2im_unpool(im2col.im2col(pooled), argmax, pre, bias)


def _exercise_activations(rng):
    from diva_numba.kernels import activations

    for dtype in (np.float32, np.float64):
        values = gpu(rng.standard_normal((2, 5, 5)).astype(dtype))
        bias = gpu(np.zeros(2, dtype=dtype))
        activations.relu_forward(values, bias=bias)
        activations.relu_forward(values, bias=bias, out=gpu(np.zeros_like(values)))
        activations.relu_forward(values)
        activations.relu_backward(gpu(rng.standard_normal((2, 5, 5)).astype(dtype)), values)
        pooled, argmax = activations.maxpool_forward(values)
        activations.maxpool_forward(values, bias=bias)
        activations.maxpool_backward(pooled, argmax, 5, 5)


def _exercise_lbfgs_ops(rng):
    from diva_numba.kernels import lbfgs_ops

    scalars = gpu(np.zeros(64))
    history = 2
    for dtype in (np.float32, np.float64):
        a, b, out = (gpu(rng.standard_normal(10).astype(dtype)) for _ in range(3))
        work = lbfgs_ops.ReductionWork(a, lbfgs_ops.trial_sum_count(history))
        lbfgs_ops.dot(a, b, scalars, 0)
        lbfgs_ops.dot(a, b, scalars, 0, work=work)
        lbfgs_ops.squared_error(a, b, grad_out=out, scalars=scalars, slot=1)
        pre, target, grad = (gpu(rng.standard_normal((2, 5)).astype(dtype)) for _ in range(3))
        lbfgs_ops.relu_squared_error(
            pre, gpu(np.zeros(2, dtype)), target, grad_out=grad, scalars=scalars, slot=1
        )
        lbfgs_ops.combine(out, a, b, alpha=1.0, beta=-1.0)
        lbfgs_ops.add_scaled(out, a, scalars, plus=0, minus=1, over=2)
        lbfgs_ops.scale(out, scalars, numerator=0, denominator=1)
        rows = gpu(rng.standard_normal((4 + 2 * history, 10)).astype(dtype))
        rows_layout = {"gradient_row": 2, "direction": 3, "first_history": 4, "history": history}
        lbfgs_ops.trial_scalars(
            rows, a, gpu(np.ones(1)), scalars, current=0, trial=1, loss_slot=0, first_slot=2,
            work=work, **rows_layout,
        )  # fmt: skip
        lbfgs_ops.lbfgs_step(
            rows, a, (0.5,) * (2 * history + 1), scalars, mode=lbfgs_ops.STEP_ACCEPT, slot=1,
            current=1, previous=0, out=0, step=1.0, slope_slot=1, work=work, **rows_layout,
        )  # fmt: skip
    lbfgs_ops.copy_scalar(gpu(np.ones(1)), scalars, 3)
    lbfgs_ops.copy_scalar(2.5, scalars, 4)


def _exercise_network(rng):
    """The deconvolution's own calls: views and reshapes of its workspace buffers."""
    from diva_numba.models.readers import tiny_weights
    from diva_numba.network import SubNetwork

    for start, end in ((0, 2), (1, 3)):
        network = SubNetwork(tiny_weights(0, width=2).layers, start, end)
        image = gpu(rng.standard_normal((network.in_channels, 6, 7)).astype(np.float32))
        target = gpu(np.zeros(network.output_shape(6, 7), dtype=np.float32))
        network.loss_and_gradient(image, target)
        network.forward_levels(image, (end,))


def _exercise_lbfgs(rng):
    """The optimiser on device arrays: its state, register and launches as a run makes them.

    No kernel runs, so the register it reads back is made up: a loss that falls, a
    unit gradient, a descent direction whose first trial is accepted, positive
    curvature. That carries the run through steepest descent, accepted pairs and the
    two-loop recursion.
    """
    from diva_numba import lbfgs

    def objective(x):
        return gpu(np.ones(1)), gpu(np.zeros(x.shape, np.float32))

    def made_up_register(scalars):
        register = np.zeros(scalars.shape)
        R = lbfgs._Register
        made_up_register.loss *= 0.5
        register[R.LOSS] = made_up_register.loss
        register[R.SLOPE0] = -1.0
        register[R.TRIAL + R.GRAD_SQUARED] = 1.0
        register[R.TRIAL + R.X_SQUARED] = 1.0
        register[[R.TRIAL + R.SS, R.TRIAL + R.SY, R.TRIAL + R.YY]] = 1.0
        return register

    made_up_register.loss = 1.0
    real_to_host = lbfgs.to_host
    lbfgs.to_host = made_up_register
    try:
        lbfgs.minimize_lbfgs(
            objective,
            gpu(rng.standard_normal((2, 3, 2)).astype(np.float32)),
            params=lbfgs.LBFGSParams(max_iterations=3, history=2),
        )
    finally:
        lbfgs.to_host = real_to_host


#: Kernel module -> the calls that launch each of its kernels. A kernel module
#: missing here, or a kernel its exercise does not launch, fails the test.
EXERCISES = {
    "normalize": _exercise_normalize,
    "voting": _exercise_voting,
    "nnf_resample": _exercise_nnf_resample,
    "patch_distance": _exercise_patch_distance,
    "patchmatch": _exercise_patchmatch,
    "im2col": _exercise_im2col,
    "activations": _exercise_activations,
    "lbfgs_ops": _exercise_lbfgs_ops,
}
#: Callers outside the kernels package whose launches are compiled too.
CALLER_EXERCISES = {"network": _exercise_network, "lbfgs": _exercise_lbfgs}


def _kernel_modules():
    import diva_numba.kernels as package

    # targets holds the helpers shared by the kernel modules and defines no kernels.
    return sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if info.name != "targets"
    )


def _find_kernels(dispatcher_class):
    """Module name -> {kernel name: dispatcher} for every kernel (not device function)."""
    found = {}
    for name in _kernel_modules():
        module = importlib.import_module(f"diva_numba.kernels.{name}")
        for attribute, value in vars(module).items():
            if not isinstance(value, dispatcher_class) or value.targetoptions.get("device"):
                continue
            if value.py_func.__module__ != module.__name__:
                continue  # imported from another module; listed there
            found.setdefault(name, {})[attribute] = value
    return found


def _name_device_functions_in_errors(dispatcher_class):
    """Make compile errors say which device function (and builtin) failed, and with what."""
    compile_device = dispatcher_class.compile_device

    def compile_device_with_context(self, args, *rest, **kwargs):
        try:
            return compile_device(self, args, *rest, **kwargs)
        except Exception as exc:
            function = self.py_func
            argument_types = ", ".join(str(t) for t in args)
            exc.add_note(
                f"  while compiling device function "
                f"{function.__module__}.{function.__qualname__}({argument_types})"
            )
            raise

    dispatcher_class.compile_device = compile_device_with_context


def _describe(exc):
    lines = [f"{type(exc).__name__}: {exc}", *getattr(exc, "__notes__", ())]
    if any(".ol_min." in line or ".ol_max." in line for line in lines):
        lines.append(
            "  hint: the builtin min()/max() do not compile for this CUDA target (their "
            "overloads take *args); compare with if/else or a two-argument shared helper"
        )
    elif "Signature mismatch" in lines[0]:
        lines.append(
            "  hint: device functions with default arguments or *args do not compile for "
            "this CUDA target when called with fewer arguments"
        )
    return "\n".join(lines)


def _toolchain_problem(cuda):
    """Why NVVM cannot compile here, or None when it can."""
    from numba.cuda.cudadrv import nvvm

    if not nvvm.is_available():
        return "libNVVM not found (set CUDA_HOME to a CUDA toolkit)"

    def trivial(out):
        out[0] = 1.0

    try:
        cuda.compile_ptx(trivial, "void(float32[::1])", cc=COMPUTE_CAPABILITY)
    except Exception as exc:
        return f"the CUDA toolchain cannot compile a trivial kernel: {exc}"
    return None


def _assemble(ptxas, ptx):
    """ptxas's complaint about ``ptx`` for sm_90, or None if it assembles."""
    with tempfile.TemporaryDirectory() as directory:
        source = os.path.join(directory, "kernel.ptx")
        with open(source, "w") as handle:
            handle.write(ptx)
        result = subprocess.run(
            [ptxas, f"-arch={_ARCH}", "-o", os.path.join(directory, "kernel.cubin"), source],
            capture_output=True,
            text=True,
        )
    if result.returncode == 0:
        return None
    message = (result.stderr or result.stdout).strip()
    if "Unsupported .version" in message:
        return None  # an older assembler than the compiler: nothing learnt about the kernel
    return message


def _find_ptxas():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.access(os.path.join(home, "bin", "ptxas"), os.X_OK):
            return os.path.join(home, "bin", "ptxas")
    return shutil.which("ptxas")


#: Kernels whose float64 arithmetic on float32 data is deliberate: (module, kernel)
#: -> why. Every other kernel compiled with float32 arrays must have none.
FLOAT64_BY_DESIGN = {
    **{
        ("lbfgs_ops", name): "the optimiser's scalars are float64 by design (docs/DESIGN.md "
        "section 2): reductions accumulate in float64, vector updates apply float64 "
        "coefficients and round once; these kernels are memory-bound, so the float64 rate "
        "does not set their speed"
        for name in (
            "_combine_kernel",
            "_add_scaled_kernel",
            "_scale_kernel",
            "_dot_kernel",
            "_squared_error_kernel",
            "_relu_squared_error_kernel",
            "_trial_scalars_kernel",
            "_lbfgs_step_kernel",
        )
    },
    **{
        ("nnf_resample", name): "flow vectors move positions in float64, arranged so that a "
        "fused multiply-add rounds like a multiply and an add and both targets agree "
        "(module docstring); one position per thread"
        for name in ("_pull_kernel", "_push_kernel")
    },
}
#: PTX instructions that only move data: a float64 load, store or move is not arithmetic.
_DATA_MOVEMENT = {"ld", "ldu", "st", "mov"}
_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][a-z0-9_.]*)\s")
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def float64_instructions(ptx):
    """``{"file:line": [opcodes]}`` of the float64 arithmetic in ``ptx`` (built with lineinfo)."""
    files, found, location = {}, {}, ("?", "?")
    for line in ptx.splitlines():
        stripped = line.strip()
        if stripped.startswith(".file"):
            _, index, path = stripped.split(None, 2)
            files[index] = path.split('"')[1] if '"' in path else path
            continue
        if stripped.startswith(".loc"):
            fields = stripped.replace(",", " ").split()
            location = (fields[1], fields[2])
            continue
        match = _INSTRUCTION.match(line)  # helpers inlined report the line that calls them
        if not match:
            continue
        opcode = match.group(1)
        if ".f64" not in opcode or opcode.split(".")[0] in _DATA_MOVEMENT:
            continue
        found.setdefault(location, set()).add(opcode)
    report = {}
    for (index, line_number), opcodes in found.items():
        path = files.get(index, "?")
        if path.startswith(_REPOSITORY + os.sep):
            path = os.path.relpath(path, _REPOSITORY)
        report[f"{path}:{line_number}"] = sorted(opcodes)
    return dict(sorted(report.items()))


def _float32_signature(argument_types):
    """True when a float32 array is among the arguments (float64-only variants are not checked)."""
    from numba.core import types as numba_types

    dtypes = []

    def collect(value):
        if isinstance(value, numba_types.BaseTuple):
            for item in value:
                collect(item)
        elif isinstance(value, numba_types.Array) and isinstance(value.dtype, numba_types.Float):
            dtypes.append(value.dtype)

    for value in argument_types:
        collect(value)
    return numba_types.float32 in dtypes


def compile_report():
    """Exercise, record and compile every kernel; a JSON-ready report."""
    from numba import cuda
    from numba.cuda import dispatcher

    class _Target:
        compute_capability = COMPUTE_CAPABILITY

    # Device functions are compiled for the "current device"; there is none.
    dispatcher.get_current_device = lambda: _Target()
    problem = _toolchain_problem(cuda)
    if problem:
        return {"status": "no-toolchain", "reason": problem}

    sys.modules["cupy"] = _fake_cupy_module()
    _type_like_cupy()
    launches, launch_problems = {}, {}
    dispatcher_class = dispatcher.CUDADispatcher
    dispatcher_class.__getitem__ = lambda kernel, config: _TypeRecordingLaunch(
        kernel, launches, launch_problems
    )
    _name_device_functions_in_errors(dispatcher_class)
    found = _find_kernels(dispatcher_class)

    exercise_errors = {}
    for name, exercise in {**EXERCISES, **CALLER_EXERCISES}.items():
        try:
            exercise(np.random.default_rng(0))
        except Exception:
            exercise_errors[name] = traceback.format_exc()

    ptxas = _find_ptxas()
    modules = {}
    for module_name in _kernel_modules():
        kernels = {}
        for kernel_name, kernel in sorted(found.get(module_name, {}).items()):
            compiled = []
            for argument_types in sorted(launches.get(kernel, ()), key=str):
                entry = {"signature": ", ".join(str(t) for t in argument_types), "error": None}
                try:
                    # lineinfo maps the PTX to Python lines (for the float64 report);
                    # it does not change the code generated.
                    ptx, _ = cuda.compile_ptx(
                        kernel.py_func,
                        argument_types,
                        cc=COMPUTE_CAPABILITY,
                        fastmath=bool(kernel.targetoptions.get("fastmath")),
                        debug=bool(kernel.targetoptions.get("debug")),
                        lineinfo=True,
                    )
                except Exception as exc:
                    entry["error"] = _describe(exc)
                else:
                    entry["targets_arch"] = f".target {_ARCH}" in ptx
                    entry["float32"] = _float32_signature(argument_types)
                    entry["float64"] = float64_instructions(ptx) if entry["float32"] else {}
                    if ptxas:
                        entry["assembler_error"] = _assemble(ptxas, ptx)
                compiled.append(entry)
            kernels[kernel_name] = {
                "compiled": compiled,
                "launch_problems": sorted(launch_problems.get(kernel, ())),
                "cached": bool(getattr(kernel, "_cache", None))
                and type(kernel._cache).__name__ != "NullCache",
            }
        modules[module_name] = {
            "kernels": kernels,
            "has_exercise": module_name in EXERCISES,
            "exercise_error": exercise_errors.get(module_name),
        }
    return {
        "status": "ok",
        "ptxas": ptxas,
        "modules": modules,
        "caller_errors": {name: exercise_errors.get(name) for name in CALLER_EXERCISES},
    }


# =========================================================================== test side


def _toolkit_candidates():
    for pattern in _TOOLKIT_GLOBS:
        for home in sorted(glob.glob(pattern)):
            if glob.glob(os.path.join(home, "nvvm", "lib64", "libnvvm.so*")):
                yield home


def _run_compiler(extra_env):
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", **extra_env}
    result = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900
    )
    if result.returncode != 0:
        pytest.fail(f"the PTX compiler subprocess failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def ptx_report():
    report = _run_compiler({})
    toolkit_given = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if report["status"] != "ok" and not toolkit_given:
        for home in _toolkit_candidates():
            report = _run_compiler({"CUDA_HOME": home})
            if report["status"] == "ok":
                break
    if report["status"] != "ok":
        pytest.skip(f"cannot compile CUDA kernels here: {report['reason']}")
    return report


def _exercised_module(ptx_report, module_name):
    """The report of ``module_name``, after the checks every test of a module starts with."""
    module = ptx_report["modules"][module_name]
    if module["exercise_error"]:
        pytest.fail(f"the exercise of {module_name} failed:\n{module['exercise_error']}")
    if not module["kernels"]:
        if module["has_exercise"]:
            pytest.fail(f"{module_name} has an exercise but no CUDA kernels; remove it")
        pytest.skip(f"{module_name} defines no CUDA kernels")
    if not module["has_exercise"]:
        pytest.fail(
            f"{module_name} defines kernels {sorted(module['kernels'])} but has no exercise "
            "in EXERCISES of tests/test_cuda_ptx.py"
        )
    return module


@pytest.mark.parametrize("module_name", _kernel_modules())
def test_kernels_of_module_compile_to_ptx(ptx_report, module_name):
    """Every kernel is launched as the real CUDA target types it, and compiles for sm_90."""
    module = _exercised_module(ptx_report, module_name)
    problems = []
    for kernel_name, kernel in module["kernels"].items():
        for problem in kernel["launch_problems"]:
            problems.append(f"{kernel_name}: launch: {problem}")
        if not kernel["compiled"] and not kernel["launch_problems"]:
            problems.append(f"{kernel_name}: never launched by the exercise of {module_name}")
        for entry in kernel["compiled"]:
            where = f"{kernel_name}({entry['signature']})"
            if entry["error"]:
                problems.append(f"{where}: {entry['error']}")
            elif not entry["targets_arch"]:
                problems.append(f"{where}: PTX does not target {_ARCH}")
            elif entry.get("assembler_error"):
                problems.append(f"{where}: ptxas: {entry['assembler_error']}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.mark.parametrize("module_name", _kernel_modules())
def test_float32_kernels_do_no_float64_arithmetic(ptx_report, module_name):
    """PTX of kernels compiled with float32 arrays has no float64 arithmetic, unless by design."""
    module = _exercised_module(ptx_report, module_name)
    problems = [
        f"{kernel_name}: listed in FLOAT64_BY_DESIGN but {module_name} has no such kernel"
        for listed_module, kernel_name in FLOAT64_BY_DESIGN
        if listed_module == module_name and kernel_name not in module["kernels"]
    ]
    for kernel_name, kernel in module["kernels"].items():
        checked = [entry for entry in kernel["compiled"] if entry.get("float32")]
        by_design = (module_name, kernel_name) in FLOAT64_BY_DESIGN
        if by_design:
            if checked and not any(entry["float64"] for entry in checked):
                problems.append(
                    f"{kernel_name}: listed in FLOAT64_BY_DESIGN but its float32 PTX has no "
                    "float64 arithmetic; remove it from the list"
                )
            continue
        for entry in checked:
            if entry["float64"]:
                lines = "\n".join(
                    f"    {where}: {', '.join(opcodes)}"
                    for where, opcodes in entry["float64"].items()
                )
                problems.append(
                    f"{kernel_name}({entry['signature']}): float64 arithmetic (a 0.0 literal, "
                    "a Python float or a float64 constant; use np.float32 or the array's "
                    f"dtype), from:\n{lines}"
                )
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.mark.parametrize("module_name", _kernel_modules())
def test_kernels_cache_their_compilation(ptx_report, module_name):
    """``cache=True``: a new process loads the kernels instead of compiling them again."""
    module = _exercised_module(ptx_report, module_name)
    uncached = sorted(name for name, kernel in module["kernels"].items() if not kernel["cached"])
    if uncached:
        pytest.fail(f"kernels without cache=True: {', '.join(uncached)}", pytrace=False)


def test_caller_exercises_run(ptx_report):
    """The exercises outside the kernels package ran (their launches are compiled above)."""
    failed = {name: error for name, error in ptx_report["caller_errors"].items() if error}
    if failed:
        pytest.fail("\n".join(f"{name}:\n{error}" for name, error in failed.items()))


if __name__ == "__main__":
    json.dump(compile_report(), sys.stdout, indent=1)
