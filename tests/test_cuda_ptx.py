"""Every CUDA kernel of the kernels package compiles to PTX for compute capability 9.0.

The CUDA simulator runs kernels as Python, so it cannot catch what only Numba's
CUDA compiler rejects (a builtin without a CUDA lowering, a float where an int is
needed, a type that cannot be unified). This test compiles every kernel with the
real CUDA target and libNVVM, which needs no GPU, in a subprocess started without
``NUMBA_ENABLE_CUDASIM`` (the test session runs under the simulator). When a PTX
assembler (``ptxas``) is found, the PTX is also assembled for sm_90.

Signatures come from the code itself, not from a table: each kernel module has an
*exercise* (tests/cuda_exercises.py) that calls its public functions on tiny arrays
which pose as CuPy arrays (NumPy arrays behind a stand-in ``cupy`` module:
tests/ptx_standin.py), with kernel launches intercepted so that nothing runs. Every
launch records its argument types as the real CUDA dispatcher types them
(``CUDADispatcher.typeof_pyval`` on the stand-in arrays, which Numba, as for CuPy, can
only type through their ``__cuda_array_interface__``); each distinct (kernel, argument
types) pair is then compiled. A kernel that no exercise launches fails the test, so a
new kernel cannot slip through untested; so does a launch the real target cannot type
(a tuple of CuPy arrays: numba issue 8483) or a host array reaching a kernel (Numba
would copy it to the device and back at every launch).

Kernels compiled with float32 arrays must not do float64 arithmetic: a ``0.0``
literal, a Python float argument or a float64 constant promotes the maths to float64,
which runs at a fraction of the float32 rate on most GPUs. The PTX of each such
signature is scanned for float64 instructions (moves, loads and stores aside), and
the Python lines they come from are reported; :data:`FLOAT64_BY_DESIGN` lists the
kernels whose float64 is deliberate, with the reason.

The compiler is libNVVM: numba-cuda's from the wheels (``pip install
"numba-cuda[cu13]"``), else a CUDA toolkit's. Where there is neither (the test extras
install Numba alone), the tests skip, saying so; ``DIVA_TEST_PTX=1`` turns that skip,
and a missing ``ptxas``, into failures: the CUDA toolchain check
(tools/cuda-toolchain-check.sh) sets it, and ``DIVA_PTX_REPORT=FILE`` to keep the report.

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

import numba
import numpy as np
import pytest
from cuda_exercises import CALLER_EXERCISES, EXERCISES
from ptx_standin import TypeRecordingLaunch, fake_cupy_module, type_like_cupy

COMPUTE_CAPABILITY = (9, 0)
_ARCH = f"sm_{COMPUTE_CAPABILITY[0]}{COMPUTE_CAPABILITY[1]}"
#: Toolkit locations tried when Numba finds no libNVVM on its own.
_TOOLKIT_GLOBS = ("/usr/local/cuda", "/usr/local/cuda-*", "/opt/cuda", "/opt/nvidia/cuda*")


# =========================================================================== compiler side
# Everything below up to the tests runs in the subprocess (with the stand-in arrays of
# tests/ptx_standin.py and the exercises of tests/cuda_exercises.py).


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
    try:  # the nvidia-cuda-nvcc wheel's, which matches the NVVM of the wheels
        from cuda.pathfinder import find_nvidia_binary_utility
    except ImportError:
        return shutil.which("ptxas")
    return find_nvidia_binary_utility("ptxas")


def _toolchain_versions(ptxas):
    """Which numba-cuda, libNVVM and ptxas compiled the report (for its reader)."""
    from numba.cuda.cudadrv import nvvm

    versions = {"numba": numba.__version__, "nvvm_ir": str(nvvm.NVVM().get_ir_version())}
    try:
        from importlib.metadata import version

        versions["numba_cuda"] = version("numba-cuda")
    except Exception:
        versions["numba_cuda"] = None  # numba's own CUDA target
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        versions["libnvvm"] = load_nvidia_dynamic_lib("nvvm").abs_path
    except Exception:
        versions["libnvvm"] = None
    if ptxas:
        done = subprocess.run([ptxas, "--version"], capture_output=True, text=True)
        versions["ptxas"] = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else None
    return versions


#: Kernels whose float64 arithmetic on float32 data is deliberate: (module, kernel)
#: -> why. Every other kernel compiled with float32 arrays must have none.
FLOAT64_BY_DESIGN = {
    **{
        (module, name): "the optimiser's scalars are float64 by design (docs/DESIGN.md "
        "section 2): reductions accumulate in float64, vector updates apply float64 "
        "coefficients and round once; these kernels are memory-bound, so the float64 rate "
        "does not set their speed"
        for module, names in (
            ("vector_ops", ("_combine_kernel", "_add_scaled_kernel", "_scale_kernel")),
            ("reductions", ("_dot_kernel",)),
            ("squared_error", ("_squared_error_kernel", "_relu_squared_error_kernel")),
            ("lbfgs_ops", ("_trial_scalars_kernel", "_lbfgs_step_kernel")),
        )
        for name in names
    },
    ("nnf_resample", "_pull_kernel"): "flow vectors move positions in float64, arranged so "
    "that a fused multiply-add rounds like a multiply and an add and both targets agree "
    "(module docstring); one position per thread",
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

    sys.modules["cupy"] = fake_cupy_module()
    type_like_cupy()
    launches, launch_problems = {}, {}
    dispatcher_class = dispatcher.CUDADispatcher
    dispatcher_class.__getitem__ = lambda kernel, config: TypeRecordingLaunch(
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
        "toolchain": _toolchain_versions(ptxas),
        "float64_by_design": sorted(f"{module}.{kernel}" for module, kernel in FLOAT64_BY_DESIGN),
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
    required = os.environ.get("DIVA_TEST_PTX") == "1"
    if report["status"] != "ok":
        why = f"cannot compile CUDA kernels here: {report['reason']}"
        if required:
            pytest.fail(f"DIVA_TEST_PTX=1 but {why}", pytrace=False)
        pytest.skip(why)
    if required and not report["ptxas"]:
        pytest.fail("DIVA_TEST_PTX=1 but no ptxas to assemble for sm_90", pytrace=False)
    if os.environ.get("DIVA_PTX_REPORT"):
        with open(os.environ["DIVA_PTX_REPORT"], "w") as handle:
            json.dump(report, handle, indent=1)
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
            "in EXERCISES of tests/cuda_exercises.py"
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
