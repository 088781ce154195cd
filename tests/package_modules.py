"""Every module of the installed package, found by walking it (no hand-kept list).

``pkgutil.walk_packages`` over ``diva_numba`` finds what lies under the package's
folder. Sub-packages that pyproject.toml maps to folders of their own
(``[tool.setuptools] package-dir``, e.g. ``diva_numba.kernels`` -> ``kernels/``) lie
there after a wheel install, but an editable install leaves them outside the
package's folder, where the walk cannot see them; they are walked from their own
``__path__``. Run as a script, the module imports every module it finds (the
import-everything step of the CUDA toolchain check) and prints how many it imported.
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


def import_all() -> list[str]:
    """Import every module of the package; the names imported.

    ``__main__`` modules are left out: importing one runs the command line (``python -m
    diva_numba --help`` runs it instead).
    """
    names = [name for name in module_names() if not name.endswith(".__main__")]
    for name in names:
        importlib.import_module(name)
    return names


if __name__ == "__main__":
    imported = import_all()
    print(f"imported {len(imported)} modules of {PACKAGE}")
    sys.exit(0)
