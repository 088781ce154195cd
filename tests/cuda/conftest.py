"""Shared set-up of the CUDA-simulator tests: blocks shrunk so that tiny inputs span several."""

import pytest

from diva_numba.kernels import targets


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(targets, "BLOCK_2D", [4, 2])
    monkeypatch.setattr(targets, "BLOCK_1D", [8])
