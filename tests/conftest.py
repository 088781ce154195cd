"""Test configuration.

CUDA kernels run under Numba's CUDA simulator unless ``DIVA_TEST_GPU=1`` asks
for a real GPU. The variable must be set before Numba's CUDA target is first
imported, which is why it is set here, at collection time.
"""

import os

# As in diva_numba/__init__.py; set before NumPy loads its BLAS.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

if os.environ.get("DIVA_TEST_GPU") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # pytest has already imported numba (to resolve the warning filters in
    # pyproject.toml), so numba's configuration must re-read the environment.
    import numba.core.config

    numba.core.config.reload_config()

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
    """A fresh random generator per test; its seed is printed on failure."""
    seed = np.random.SeedSequence().entropy % (2**32)
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def model_path():
    """The real VGG-19 model, fetched once per run (tests using it are marked `model`)."""
    from diva_numba.models import store

    return store.ensure_model(progress=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A small random-weight model with VGG-19's structure: fast pipeline tests."""
    from diva_numba.models import export_onnx, tiny_weights

    return export_onnx(tiny_weights(7, width=4), tmp_path_factory.mktemp("model") / "tiny.onnx")
