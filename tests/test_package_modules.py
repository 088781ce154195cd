"""Every module of the package imports, under a name numba-cuda leaves alone.

numba-cuda installs an import hook (``_numba_cuda_redirector``) that takes over every
module whose dotted name contains the text ``numba.cuda``, and it recurses forever on a
name outside Numba: ``diva_numba.cuda_graphs`` died with ``RecursionError`` on every
machine with numba-cuda installed. The names are checked here on every run; the imports
run in a fresh interpreter with the real CUDA target (no simulator), so that next to the
real numba-cuda (the CUDA toolchain check, tools/cuda-toolchain-check.sh) a name it
intercepts fails here as it would for a user.
"""

from __future__ import annotations

import os
import subprocess
import sys

import package_modules

#: What numba-cuda's import hook looks for in a dotted module name.
INTERCEPTED = "numba.cuda"


def test_no_module_name_is_intercepted_by_numba_cuda():
    intercepted = [name for name in package_modules.module_names() if INTERCEPTED in name]
    assert not intercepted, (
        f"numba-cuda's import hook takes over any module whose name contains "
        f"{INTERCEPTED!r} and fails on it; rename: {', '.join(intercepted)}"
    )


def test_the_walk_finds_every_source_file():
    """No module escapes the walk (mapped sub-packages included), so none escapes the checks."""
    names = set(package_modules.module_names())
    folders = package_modules.package_folders()
    missing = []
    for package, (folder,) in folders.items():
        for directory, subdirectories, files in os.walk(folder):
            subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
            if "__init__.py" not in files:
                subdirectories[:] = []
                continue
            relative = os.path.relpath(directory, folder)
            prefix = package if relative == "." else f"{package}.{relative.replace(os.sep, '.')}"
            for file in files:
                if not file.endswith(".py"):
                    continue
                module = file[: -len(".py")]
                name = prefix if module == "__init__" else f"{prefix}.{module}"
                if name not in names:
                    missing.append(name)
    assert "diva_numba.kernels" in folders
    assert not missing, f"modules the walk did not find: {missing}"


def _fresh_python(*arguments, timeout=300):
    """Run a new interpreter on the real CUDA target (not the test session's simulator)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    return subprocess.run(
        [sys.executable, *arguments], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_every_module_imports():
    done = _fresh_python(package_modules.__file__)
    assert done.returncode == 0, f"importing every module failed:\n{done.stderr[-4000:]}"
    count = sum(1 for name in package_modules.module_names() if not name.endswith(".__main__"))
    assert done.stdout.strip() == f"imported {count} modules of diva_numba", done.stdout


def test_python_m_diva_numba_help():
    done = _fresh_python("-m", "diva_numba", "--help", timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.startswith("Usage: "), done.stdout
    assert "Traceback" not in done.stderr, done.stderr
