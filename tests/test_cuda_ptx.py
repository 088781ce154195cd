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
intercepted so that nothing runs. Every launch records its argument types; each
distinct (kernel, argument types) pair is then compiled. A kernel that no exercise
launches fails the test, so a new kernel cannot slip through untested.

Run this file as a script to print the JSON report the test reads.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import pkgutil
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
    """A host array that the kernels package takes for a CuPy array."""

    __module__ = "cupy"

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ctypes.data, False),
            "strides": self.strides,
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


class _TypeRecordingLaunch:
    """Stands in for ``kernel[grid, block]``: records the argument types, runs nothing."""

    def __init__(self, kernel, launches):
        self._kernel = kernel
        self._launches = launches

    def __call__(self, *args):
        argument_types = tuple(self._kernel.typeof_pyval(_as_host(arg)) for arg in args)
        self._launches.setdefault(self._kernel, set()).add(argument_types)


def _as_host(value):
    if isinstance(value, tuple):
        return tuple(_as_host(item) for item in value)
    if isinstance(value, _FakeGpuArray):
        # Typed exactly as Numba types a CuPy array: dtype, ndim and layout from the strides.
        return np.asarray(value)
    return value


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
    from diva_numba.kernels import im2col

    for dtype in (np.float32, np.float64):
        image = gpu(rng.standard_normal((2, 4, 5)).astype(dtype))
        columns = im2col.im2col(image)
        im2col.col2im(columns, 4, 5)


def _exercise_activations(rng):
    from diva_numba.kernels import activations

    for dtype in (np.float32, np.float64):
        values = gpu(rng.standard_normal((2, 5, 5)).astype(dtype))
        activations.relu_forward(values, bias=gpu(np.zeros(2, dtype=dtype)))
        activations.relu_forward(values)
        activations.relu_backward(gpu(rng.standard_normal((2, 5, 5)).astype(dtype)), values)
        pooled, argmax = activations.maxpool_forward(values)
        activations.maxpool_backward(pooled, argmax, 5, 5)


def _exercise_lbfgs_ops(rng):
    from diva_numba.kernels import lbfgs_ops

    scalars = gpu(np.zeros(8))
    for dtype in (np.float32, np.float64):
        a, b, out = (gpu(rng.standard_normal(10).astype(dtype)) for _ in range(3))
        lbfgs_ops.dot(a, b, scalars, 0)
        lbfgs_ops.squared_error(a, b, grad_out=out, scalars=scalars, slot=1)
        lbfgs_ops.combine(out, a, b, alpha=1.0, beta=-1.0)
        lbfgs_ops.add_scaled(out, a, scalars, plus=0, minus=1, over=2)
        lbfgs_ops.scale(out, scalars, numerator=0, denominator=1)
    lbfgs_ops.copy_scalar(gpu(np.ones(1)), scalars, 3)
    lbfgs_ops.copy_scalar(2.5, scalars, 4)


def _exercise_network(rng):
    """The deconvolution's own calls: views and reshapes of its workspace buffers."""
    from diva_numba.models.readers import tiny_weights
    from diva_numba.network import SubNetwork

    network = SubNetwork(tiny_weights(0, width=2).layers, 0, 2)
    image = gpu(rng.standard_normal((3, 6, 7)).astype(np.float32))
    target = gpu(np.zeros(network.output_shape(6, 7), dtype=np.float32))
    network.loss_and_gradient(image, target)


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
CALLER_EXERCISES = {"network": _exercise_network}


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
    launches = {}
    dispatcher_class = dispatcher.CUDADispatcher
    dispatcher_class.__getitem__ = lambda kernel, config: _TypeRecordingLaunch(kernel, launches)
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
                    ptx, _ = cuda.compile_ptx(
                        kernel.py_func,
                        argument_types,
                        cc=COMPUTE_CAPABILITY,
                        fastmath=bool(kernel.targetoptions.get("fastmath")),
                        debug=bool(kernel.targetoptions.get("debug")),
                        lineinfo=bool(kernel.targetoptions.get("lineinfo")),
                    )
                except Exception as exc:
                    entry["error"] = _describe(exc)
                else:
                    entry["targets_arch"] = f".target {_ARCH}" in ptx
                    if ptxas:
                        entry["assembler_error"] = _assemble(ptxas, ptx)
                compiled.append(entry)
            kernels[kernel_name] = compiled
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


@pytest.mark.parametrize("module_name", _kernel_modules())
def test_kernels_of_module_compile_to_ptx(ptx_report, module_name):
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
    problems = []
    for kernel_name, compiled in module["kernels"].items():
        if not compiled:
            problems.append(f"{kernel_name}: never launched by the exercise of {module_name}")
        for entry in compiled:
            where = f"{kernel_name}({entry['signature']})"
            if entry["error"]:
                problems.append(f"{where}: {entry['error']}")
            elif not entry["targets_arch"]:
                problems.append(f"{where}: PTX does not target {_ARCH}")
            elif entry.get("assembler_error"):
                problems.append(f"{where}: ptxas: {entry['assembler_error']}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def test_caller_exercises_run(ptx_report):
    """The exercises outside the kernels package ran (their launches are compiled above)."""
    failed = {name: error for name, error in ptx_report["caller_errors"].items() if error}
    if failed:
        pytest.fail("\n".join(f"{name}:\n{error}" for name, error in failed.items()))


if __name__ == "__main__":
    json.dump(compile_report(), sys.stdout, indent=1)
