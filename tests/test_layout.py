"""The package's layout: sub-packages by stage, each importing only the stages below it."""

import ast
from pathlib import Path

import diva_numba

PACKAGE = Path(diva_numba.__file__).parent

#: The stages from the bottom up: a module may import from its own stage and those before it.
STAGES = [
    {"errors", "environment", "outputs", "images"},
    {"gpu"},
    {"optim"},
    {"network"},
    {"image_analogy"},
    {"synthesis"},
    {"video"},
    {"finishing"},
    {"neural_style"},
    {"run"},
    {"bench"},
    {"cli", "__init__", "__main__"},
]
#: Installed beside the package (setuptools package-dir), below every stage.
BELOW_ALL = {"kernels", "models"}


def stage_of(name: str) -> int:
    return next(i for i, stage in enumerate(STAGES) if name in stage)


def imported_parts(path: Path):
    """The first component under ``diva_numba`` of every module ``path`` imports."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "diva_numba":
                continue
            if len(parts) > 1:
                yield parts[1]
            else:  # from diva_numba import name: the lazily exported API
                yield "__init__"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "diva_numba" and len(parts) > 1:
                    yield parts[1]


def test_every_module_belongs_to_a_stage():
    for path in PACKAGE.iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if path.name.startswith((".", "_")) and name not in ("__init__", "__main__"):
            continue
        if path.is_dir() and not (path / "__init__.py").exists():
            continue
        stage_of(name)  # raises StopIteration for a module no stage names


def test_no_stage_imports_a_later_one():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        for part in imported_parts(path):
            if part in BELOW_ALL:
                continue
            if stage_of(part) > stage_of(own):
                upward.append(f"{relative} imports diva_numba.{part}")
    assert not upward, "\n".join(upward)


def test_no_module_is_named_like_the_standard_library_or_a_numba_cuda_path():
    import sys

    for path in PACKAGE.rglob("*.py"):
        name = path.stem
        assert name not in sys.stdlib_module_names or name in ("__init__", "__main__"), path
        dotted = ".".join(("diva_numba", *path.relative_to(PACKAGE).with_suffix("").parts))
        # numba-cuda redirects the import of any module whose dotted name contains it.
        assert "numba.cuda" not in dotted, dotted
