"""Shared set-up of the CUDA-simulator tests: small blocks, and the stand-in GPU device.

Blocks are shrunk so that tiny inputs span several. Off the simulator
(``DIVA_TEST_GPU=1``) every test here needs a usable GPU, and skips with the reason
where there is none, as the real-GPU tests do. The ``gpu`` fixture is a CUDA
:class:`~diva_numba.gpu.device.Device` whose CuPy is the stand-in of tests/cupy_standin.py
(with its launcher, streams, graphs and libcublas), with the counters of what it does.
"""

import shutil
import sys

import cupy_standin
import pytest
from numba import config

from diva_numba.gpu.device import Device
from diva_numba.kernels import reductions, targets
from diva_numba.run import workdir


@pytest.fixture(autouse=True)
def a_usable_gpu_off_the_simulator():
    if not config.ENABLE_CUDASIM:
        from gpu_checks import SKIP_REASON

        if SKIP_REASON:
            pytest.skip(SKIP_REASON)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(targets, "BLOCK_2D", [4, 2])
    monkeypatch.setattr(targets, "BLOCK_1D", [8])


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device whose CuPy is the stand-in; the counters of what it does."""
    if not config.ENABLE_CUDASIM:
        pytest.skip("the CuPy stand-in and its launcher run under the CUDA simulator only")
    monkeypatch.setitem(sys.modules, "cupy", cupy_standin.make_module("simulated GPU"))
    counters = cupy_standin.install_launcher(monkeypatch)
    # Two partial sums per reduction (a grid-stride loop over the rest): the two-pass
    # reductions keep their shape and each simulated launch starts 24 threads, not n.
    monkeypatch.setattr(reductions, "MAX_PARTIALS", 2)
    counters.reset()
    return Device("cuda", "simulated GPU"), counters


@pytest.fixture
def cpu():
    return Device("cpu", "CPU")


@pytest.fixture
def keep_work_after(monkeypatch):
    """``keep(index, where)``: copy a GPU run's work directory to ``where`` once frame
    ``index``'s state is saved (the start of a resumed run)."""

    def keep(index, where):
        real_save_state = workdir.WorkDirectory.save_state

        def save_state(self, state):
            real_save_state(self, state)
            if state.index == index and self.manifest["device"] == "cuda" and not where.exists():
                shutil.copytree(self.path, where)  # the writer runs one job at a time

        monkeypatch.setattr(workdir.WorkDirectory, "save_state", save_state)

    return keep
