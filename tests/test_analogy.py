"""The image-analogy pipeline: plumbing on a tiny model, proof of quality on the real one."""

import cv2
import numpy as np
import pytest
from skimage import data

from diva_numba.gpu.device import resolve_device
from diva_numba.image_analogy.deep_analogy import (
    ALPHA_PRESETS,
    AnalogyModel,
    AnalogyParams,
    WarmStart,
    analogy,
)
from diva_numba.images import resize

FAST = AnalogyParams(patchmatch_iterations=2, lbfgs_iterations=2)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return AnalogyModel(tiny_model, resolve_device("cpu"))


@pytest.fixture(scope="module")
def real(model_path):
    return AnalogyModel(model_path, resolve_device("cpu"))


def random_image(rng, height, width):
    smooth = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 2)
    return np.clip(smooth, 0, 255).astype(np.uint8)


def test_outputs_have_the_documented_shapes(tiny, rng):
    a = random_image(rng, 41, 57)
    bp = random_image(rng, 50, 38)
    result = analogy(tiny, a, bp, params=FAST)
    assert result.a_prime.shape == a.shape and result.a_prime.dtype == np.uint8
    assert result.b.shape == bp.shape and result.b.dtype == np.uint8
    assert result.nnf_ab.shape == (41, 57, 2) and result.nnf_ab.dtype == np.int32
    assert result.nnf_ba.shape == (50, 38, 2) and result.nnf_ba.dtype == np.int32
    for field, (h, w) in ((result.nnf_ab, bp.shape[:2]), (result.nnf_ba, a.shape[:2])):
        assert field[..., 0].min() >= 0 and field[..., 0].max() < h
        assert field[..., 1].min() >= 0 and field[..., 1].max() < w
    assert sorted(result.level_fields) == [1, 2, 3, 4, 5]
    assert sorted(result.deconvolutions) == [2, 3, 4, 5]
    assert "deconvolution" in result.profile.table()


def test_a_prime_is_made_of_style_pixels(tiny, rng):
    """With 1-pixel votes A' would be a pure gather of B'; 3x3 votes average B' colours."""
    a = random_image(rng, 40, 40)
    bp = np.zeros((40, 40, 3), np.uint8)
    bp[:, :, 0] = 200  # a flat red style image
    result = analogy(tiny, a, bp, params=FAST)
    assert np.all(np.abs(result.a_prime.astype(int) - [200, 0, 0]) <= 1)


def test_same_seed_same_result_other_seed_differs(tiny, rng):
    a = random_image(rng, 40, 48)
    bp = random_image(rng, 44, 40)
    first = analogy(tiny, a, bp, params=FAST)
    again = analogy(tiny, a, bp, params=FAST)
    np.testing.assert_array_equal(first.nnf_ab, again.nnf_ab)
    np.testing.assert_array_equal(first.a_prime, again.a_prime)
    other = analogy(tiny, a, bp, params=AnalogyParams(patchmatch_iterations=2, lbfgs_iterations=2,
                                                      seed=99))  # fmt: skip
    assert not np.array_equal(first.nnf_ab, other.nnf_ab)


def test_reused_latent_b_skips_the_reverse_direction(tiny, rng):
    a = random_image(rng, 40, 40)
    bp = random_image(rng, 40, 40)
    first = analogy(tiny, a, bp, params=FAST)
    fields_ab = {lv: f for lv, (f, _) in first.level_fields.items()}
    warm_start = WarmStart(latent_b=first.latent_b, fields_ab=fields_ab)
    second = analogy(tiny, a, bp, params=FAST, warm_start=warm_start)
    assert second.b is None and second.nnf_ba is None
    assert second.a_prime.shape == a.shape


def test_params_validate_and_map_levels():
    params = AnalogyParams()
    assert params.alphas == ALPHA_PRESETS["paper"]
    assert params.alpha(4) == 0.8 and params.alpha(1) == 0.1
    assert params.patch_size(5) == 3 and params.patch_size(1) == 5 and params.patch_size(0) == 3
    assert params.search_radius(5, (448, 300)) == 28 and params.search_radius(1, (448, 300)) == 4
    with pytest.raises(ValueError):
        AnalogyParams(alphas=(0.8, 0.7, 0.6))
    with pytest.raises(ValueError):
        AnalogyParams(mask="box")


# -- the real model ----------------------------------------------------------------------

SIZE = 96


def astronaut_crop():
    return cv2.resize(data.astronaut()[30:330, 100:400], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.mark.model
@pytest.mark.slow
def test_known_correspondence_is_recovered(real):
    """B' is A zoomed, shifted and recoloured: nnf_ab must find where each pixel went."""
    a = astronaut_crop()
    scale, shift_y, shift_x = 1.15, 9.0, -7.0
    centre = (SIZE - 1) / 2
    to_bp = np.array(
        [[scale, 0, (1 - scale) * centre + shift_x], [0, scale, (1 - scale) * centre + shift_y]],
        np.float32,
    )
    bp = cv2.warpAffine(a, to_bp, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)
    bp = np.clip(bp * np.array([0.7, 1.0, 1.25]) + np.array([30, 0, -10]), 0, 255).astype(np.uint8)
    result = analogy(real, a, bp, params=AnalogyParams(lbfgs_iterations=5))
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    true_y = scale * ys + (1 - scale) * centre + shift_y
    true_x = scale * xs + (1 - scale) * centre + shift_x
    inside = (true_y > 4) & (true_y < SIZE - 5) & (true_x > 4) & (true_x < SIZE - 5)
    error = np.hypot(result.nnf_ab[..., 0] - true_y, result.nnf_ab[..., 1] - true_x)[inside]
    identity_error = np.hypot(ys - true_y, xs - true_x)[inside]
    assert np.median(error) < 3.0
    assert np.median(error) < np.median(identity_error) / 3


def lab_statistics(image):
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
    return np.concatenate([lab.mean(axis=0), lab.std(axis=0)])


def edge_strength(image):
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1)
    return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)).ravel()


@pytest.mark.model
@pytest.mark.slow
def test_a_prime_has_the_style_look_and_the_structure_of_a(real):
    a = astronaut_crop()
    bp = cv2.resize(data.coffee(), (128, 96), interpolation=cv2.INTER_AREA)
    result = analogy(real, a, bp, params=AnalogyParams(lbfgs_iterations=5))
    look = lab_statistics(result.a_prime)
    assert np.linalg.norm(look - lab_statistics(bp)) < 0.7 * np.linalg.norm(
        look - lab_statistics(a)
    )
    edges_a = edge_strength(a)
    aligned = np.corrcoef(edges_a, edge_strength(result.a_prime))[0, 1]
    misaligned = np.corrcoef(edges_a, edge_strength(np.ascontiguousarray(result.a_prime[::-1])))
    assert aligned > 0.3
    assert aligned > 2 * misaligned[0, 1]
    unrelated = np.corrcoef(edges_a, edge_strength(resize(bp, SIZE, SIZE)))[0, 1]
    assert aligned > unrelated + 0.2
