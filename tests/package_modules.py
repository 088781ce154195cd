"""Every module of the installed package, found by walking it (no hand-kept list).

``pkgutil.walk_packages`` over ``diva_numba`` finds what lies under the package's
folder. Sub-packages that pyproject.toml maps to folders of their own
(``[tool.setuptools] package-dir``, e.g. ``diva_numba.kernels`` -> ``kernels/``) lie
there after a wheel install, but an editable install leaves them outside the
package's folder, where the walk cannot see them; they are walked from their own
``__path__``. Run as a script, the module imports every module it finds (the
import-everything step of the CUDA toolchain check) but ``__main__`` (importing it runs
the command line), and prints how many it imported, or each failure in one line.
"""

from __future__ import annotations

import importlib
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


def module_names(onerror=None) -> list[str]:
    """Dotted names of the package, its sub-packages and every module in them, sorted.

    Parameters
    ----------
    onerror : callable, optional
        Called with the name of a sub-package whose import failed while walking (as
        :func:`pkgutil.walk_packages` does); by default the error propagates.
    """

    def raise_it(name):
        raise

    onerror = onerror or raise_it
    package = importlib.import_module(PACKAGE)
    names = {PACKAGE}
    roots = [(package.__path__, PACKAGE + ".")]
    for name in mapped_subpackages():
        names.add(name)
        try:
            roots.append((importlib.import_module(name).__path__, name + "."))
        except Exception:
            onerror(name)
    for path, prefix in roots:
        names.update(info.name for info in pkgutil.walk_packages(path, prefix, onerror=onerror))
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
