"""Test configuration.

CUDA kernels run under Numba's CUDA simulator unless ``DIVA_TEST_GPU=1`` asks
for a real GPU. The variable must be set before Numba's CUDA target is first
imported, which is why it is set here, at collection time.
"""

import os

from diva_numba.environment import apply_runtime_defaults  # noqa: E402

# As the command line does, before NumPy loads its BLAS (pytest has loaded Numba already,
# which is why tools/test.sh also sets the thread-pool variables in the environment).
apply_runtime_defaults()

if os.environ.get("DIVA_TEST_GPU") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # pytest has already imported numba (to resolve the warning filters in
    # pyproject.toml), so numba's configuration must re-read the environment.
    import numba.core.config

    numba.core.config.reload_config()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: Where the seed of a test's ``rng`` is kept, for the report of its failure.
SEED_KEY = pytest.StashKey[int]()


def draw_seed() -> int:
    """``DIVA_TEST_SEED`` from the environment if set, else a fresh seed (0 .. 2**32 - 1)."""
    value = os.environ.get("DIVA_TEST_SEED", "").strip()
    if not value:
        return int(np.random.SeedSequence().entropy % (2**32))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"DIVA_TEST_SEED must be a whole number, got {value!r}") from None


# Random inputs come from `rng`, seeded afresh for every test so that runs cover new
# cases. The seed goes into the report of a failing test (a "random seed" section, and
# the test's user_properties for --junitxml); `DIVA_TEST_SEED=<seed> pytest <test id>`
# replays that failure: with the variable set, every test's `rng` uses that seed. The
# input makers of tests/inputs.py draw from this generator; hypothesis tests keep their
# own replay mechanism (the falsifying example it prints, and its example database).
@pytest.fixture
def rng(request):
    """A random generator for this test: a fresh seed, or ``DIVA_TEST_SEED``."""
    seed = draw_seed()
    request.node.stash[SEED_KEY] = seed
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Add the seed of the test's ``rng`` to the report of any failing phase."""
    report = yield
    seed = item.stash.get(SEED_KEY, None)
    if report.failed and seed is not None:
        report.sections.append(
            ("random seed", f"{seed}; replay with: DIVA_TEST_SEED={seed} pytest '{item.nodeid}'")
        )
    return report


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
