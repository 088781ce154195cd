"""Every public kernel is a twin: ``name`` dispatches to ``name_cpu`` or ``name_cuda``."""

import importlib
import inspect
import pkgutil

import pytest

import diva_numba.kernels as package

MODULES = [
    importlib.import_module(f"{package.__name__}.{info.name}")
    for info in pkgutil.iter_modules(package.__path__)
    if info.name != "targets"
]


def dispatchers(module):
    """Public functions of ``module`` that choose a target by their arrays."""
    for name, function in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("_") or function.__module__ != module.__name__:
            continue
        if name.endswith(("_cpu", "_cuda")) or name.startswith("check_"):
            continue
        if "is_cuda_array(" in inspect.getsource(function):
            yield name


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_dispatching_kernel_has_both_twins_and_calls_them(module):
    for name in dispatchers(module):
        source = inspect.getsource(getattr(module, name))
        for twin in (f"{name}_cpu", f"{name}_cuda"):
            assert callable(getattr(module, twin, None)), f"{module.__name__}.{twin} is missing"
            assert f"{twin}(" in source, f"{module.__name__}.{name} does not call {twin}"


def test_every_twin_has_its_public_function():
    for module in MODULES:
        for name, _ in inspect.getmembers(module, inspect.isfunction):
            for suffix in ("_cpu", "_cuda"):
                if name.endswith(suffix) and not name.startswith("_"):
                    assert hasattr(module, name[: -len(suffix)]), f"{module.__name__}.{name}"
