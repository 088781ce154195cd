"""The public API: names, per-device defaults shared with the command line, import side effects."""

import os
import platform
import subprocess
import sys

import pytest
from click.testing import CliRunner

from diva_numba.cli import cli
from diva_numba.environment import RUNTIME_DEFAULTS


def test_every_public_name_resolves_to_what_it_says():
    import diva_numba.image_analogy.deep_analogy  # noqa: F401  (a submodule import must not shadow the API)
    import diva_numba.run.transfer  # noqa: F401

    for name in diva_numba.__all__:
        assert getattr(diva_numba, name) is not None
    assert callable(diva_numba.analogy) and diva_numba.analogy.__module__.endswith("deep_analogy")
    assert callable(diva_numba.transfer_video) and callable(diva_numba.analogy_files)
    assert issubclass(diva_numba.OutputError, diva_numba.DivaError)
    with pytest.raises(AttributeError):
        diva_numba.no_such_name  # noqa: B018


def test_plain_defaults_are_the_cpu_defaults():
    from diva_numba import AnalogyParams, TransferParams

    assert TransferParams() == TransferParams.for_device("cpu")
    assert AnalogyParams.for_device("cpu").lbfgs_iterations == 10
    assert AnalogyParams.for_device("cuda").lbfgs_iterations == 100
    gpu = TransferParams.for_device("cuda", temporal_weight=0.5)
    assert (gpu.work_size, gpu.guided_lbfgs_iterations, gpu.temporal_weight) == (480, 20, 0.5)
    assert gpu.analogy == AnalogyParams.for_device("cuda")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("transfer", ["480 on a GPU, 320 on the CPU", "20 on a GPU, 2 on the CPU", "default: 3;"]),
        ("analogy", ["448 on a GPU, 320 on the CPU", "100 on a GPU, 10 on the CPU"]),
    ],
)
def test_command_line_defaults_come_from_the_parameters(command, expected):
    text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
    for default in expected:
        assert default in text


def test_the_cli_uses_the_library_defaults(monkeypatch, tmp_path):
    from diva_numba import TransferParams
    from diva_numba.cli.transfer_command import _transfer_params
    from diva_numba.gpu.device import Device

    options = {"alpha": "paper", "mask": "sigmoid", "iters": 10, "lbfgs_iters": None, "seed": 0,
               "guided_iters": 3, "guided_lbfgs_iters": None, "temporal_weight": 1.0,
               "independent": False, "crf": 18, "chroma": "420", "size": None, "work_size": None,
               "preserve_colour": False, "mask_feather": 8.0, "anchors": True,
               "anchor_coverage": 0.85, "anchor_spacing": 24,
               "anchor_agreement": 5.0, "anchor_temporal_weight": 4.0}  # fmt: skip
    for kind in ("cpu", "cuda"):
        assert _transfer_params(Device(kind, kind), options) == TransferParams.for_device(kind)


def python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in RUNTIME_DEFAULTS}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_package_loads_nothing_heavy_and_sets_nothing():
    out = python(
        "import os, sys, diva_numba; "
        "print('numpy' in sys.modules, 'numba' in sys.modules, 'OMP_WAIT_POLICY' in os.environ)"
    )
    assert out == "False False False"


def test_runtime_defaults_take_effect_from_the_command_line_entry_point():
    out = python(
        "import os, sys; import diva_numba.cli; "
        "print(os.environ['OMP_WAIT_POLICY'], os.environ['NUMBA_CUDA_ARRAY_INTERFACE_SYNC'])"
    )
    assert out == "PASSIVE 0"
    late = python(
        "import numpy; from diva_numba.environment import apply_runtime_defaults; "
        "print(apply_runtime_defaults())"
    )
    assert "OPENBLAS_THREAD_TIMEOUT" in late


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt: Linux with glibc only",
)
def test_freed_memory_is_kept_unless_the_environment_says_otherwise(monkeypatch):
    code = "from diva_numba.environment import keep_freed_memory; print(keep_freed_memory())"
    assert python(code) == "True"
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")  # the user's own choice
    assert python(code) == "False"
