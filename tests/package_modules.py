"""Every module of the installed package, found by walking it (no hand-kept list).

The walk is ``pkgutil.walk_packages``'s over ``diva_numba``, entering sub-packages by
folder instead of importing them, so that a module that cannot be imported is still
named. Sub-packages that pyproject.toml maps to folders of their own
(``[tool.setuptools] package-dir``, e.g. ``diva_numba.kernels`` -> ``kernels/``) lie
there after a wheel install, but an editable install leaves them outside the
package's folder, where the walk cannot see them; they are walked from their own
folders. Run as a script, the module imports every module it finds (the
import-everything step of the CUDA toolchain check) but ``__main__`` (importing it runs
the command line), and prints how many it imported, or each failure in one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import tomllib

PACKAGE = "diva_numba"
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mapped_subpackages() -> list[str]:
    """Sub-packages of :data:`PACKAGE` that pyproject.toml maps to folders of their own."""
    with open(os.path.join(_REPOSITORY, "pyproject.toml"), "rb") as handle:
        setuptools = tomllib.load(handle).get("tool", {}).get("setuptools", {})
    mapped = setuptools.get("package-dir", {})
    return sorted(name for name in mapped if name.startswith(PACKAGE + "."))


def package_folders() -> dict[str, list[str]]:
    """The folders of :data:`PACKAGE` and of each mapped sub-package, found without running them."""
    folders = {}
    for name in (PACKAGE, *mapped_subpackages()):
        spec = importlib.util.find_spec(name)  # imports the parents only
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"{name} is not an installed package")
        folders[name] = list(spec.submodule_search_locations)
    return folders


def _walk(paths: list[str], prefix: str):
    """``pkgutil.walk_packages`` without importing: sub-packages are entered by folder."""
    for info in pkgutil.iter_modules(paths, prefix):
        yield info.name
        if info.ispkg:
            folder = os.path.join(info.module_finder.path, info.name.rpartition(".")[2])
            yield from _walk([folder], info.name + ".")


def module_names() -> list[str]:
    """Dotted names of the package, its sub-packages and every module in them, sorted.

    Nothing but the top package is imported (a module that fails to import, as one
    numba-cuda intercepts does, must still be named).
    """
    names = set()
    for package, paths in package_folders().items():
        names.add(package)
        names.update(_walk(paths, package + "."))
    return sorted(names)


def main() -> int:
    """Import every module, each on its own; print the count, or each failure in one line."""
    try:
        names = [name for name in module_names() if not name.endswith(".__main__")]
    except Exception as exc:
        print(f"walking {PACKAGE} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
    if failed:
        print(f"cannot import {len(failed)} of {len(names)} modules:", file=sys.stderr)
        print("\n".join(failed), file=sys.stderr)
        return 1
    print(f"imported {len(names)} modules of {PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
