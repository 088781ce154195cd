"""Neural style: the loss and its gradient, the optimisation, colour, the image command."""

import cv2
import naive
import numpy as np
import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner
from clips import photo

from diva_numba.cli import cli
from diva_numba.gpu.device import Device
from diva_numba.image_analogy.deep_analogy import AnalogyModel
from diva_numba.images import load_image
from diva_numba.models import tiny_weights, vgg
from diva_numba.neural_style.loss import (
    NeuralStyleLoss,
    StyleNetwork,
    content_term,
    gram,
    style_term,
    temporal_term,
    total_variation,
)
from diva_numba.neural_style.params import STYLE_LAYERS, NeuralStyleParams
from diva_numba.neural_style.styler import NeuralStyler, stylise_image

CPU = Device("cpu", "CPU")


def lab(rgb):
    """CIE L*a*b* (D65, OpenCV's float conversion) of an RGB uint8 image."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def lab_chroma(rgb):
    return lab(rgb)[..., 1:]


@pytest.fixture(scope="module")
def weights64():
    """Tiny random VGG-19 weights in float64, for gradients checked to many digits."""
    layers = tiny_weights(7, width=4).layers
    return {name: (w.astype(np.float64), b.astype(np.float64)) for name, (w, b) in layers.items()}


def _loss(weights, rng, params, *, shape=(3, 13, 11)):
    style = rng.normal(0.0, 40.0, (3, 15, 12))
    loss = NeuralStyleLoss.build(weights, style, params)
    loss.set_content(rng.normal(0.0, 40.0, shape))
    warped = rng.normal(0.0, 40.0, shape)
    loss.set_temporal([(warped, rng.uniform(0.0, 1.0, shape[1:]))])
    return loss


@pytest.mark.parametrize("content_layer", ["relu4_2", "relu3_1", "relu5_1"])
def test_the_whole_loss_gradient_matches_finite_differences(weights64, rng, content_layer):
    params = NeuralStyleParams(tv_weight=0.7, temporal_weight=3.0, content_layer=content_layer,
                               style_layer_weights=(1.0, 0.5, 2.0, 1.0, 0.3))  # fmt: skip
    loss = _loss(weights64, rng, params)
    x = rng.normal(0.0, 40.0, (3, 13, 11))
    value, grad = loss(x)
    grad = grad.copy()
    terms = loss.terms(x)
    assert set(terms) == {"content", "style", "tv", "temporal"}
    assert value == pytest.approx(sum(terms.values()), rel=1e-12)
    assert all(term > 0 for term in terms.values())
    # Directional derivatives along random directions, and a few single pixels; steps
    # small enough that no ReLU or max-pool switches between the two points.
    for _ in range(3):
        direction = rng.normal(size=x.shape)
        step = 1e-5
        numeric = (loss(x + step * direction)[0] - loss(x - step * direction)[0]) / (2 * step)
        assert numeric == pytest.approx(float((grad * direction).sum()), rel=1e-6)
    for index in [(0, 0, 0), (1, 6, 5), (2, 12, 10)]:
        bumped = np.zeros_like(x)
        bumped[index] = 1e-5
        numeric = (loss(x + bumped)[0] - loss(x - bumped)[0]) / 2e-5
        assert numeric == pytest.approx(grad[index], rel=1e-5, abs=1e-8)


def test_gram_and_its_gradient_match_the_naive_reference(rng):
    features = np.maximum(rng.normal(size=(5, 7)), 0.0)
    target = naive.gram_matrix(np.maximum(rng.normal(size=(5, 9)), 0.0))
    np.testing.assert_allclose(gram(features), naive.gram_matrix(features), rtol=1e-12)
    loss, grad = style_term(features, target)
    assert float(loss) == pytest.approx(naive.style_loss(features, target), rel=1e-12)
    expected = naive.numerical_gradient(lambda f: naive.style_loss(f, target), features)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-10)


def test_temporal_gradient_matches_the_naive_reference(rng):
    x = rng.normal(size=(3, 5, 4))
    targets = [(rng.normal(size=x.shape), rng.uniform(size=x.shape[1:])) for _ in range(2)]
    targets[1][1][2:, :] = 0.0  # a long-term weight that leaves pixels to the nearer frame
    loss, grad = temporal_term(x, targets)
    assert float(loss) == pytest.approx(naive.temporal_loss(x, targets), rel=1e-12)
    expected = naive.numerical_gradient(lambda v: naive.temporal_loss(v, targets), x)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-10)


def test_content_and_tv_gradients(rng):
    features, target = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    _, grad = content_term(features, target)
    expected = naive.numerical_gradient(lambda f: float(content_term(f, target)[0]), features)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-10)
    x = rng.normal(size=(3, 4, 5))
    _, grad = total_variation(x)
    expected = naive.numerical_gradient(lambda v: float(total_variation(v)[0]), x)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-10)


def test_taps_are_the_network_features(weights64, rng):
    x = rng.normal(0.0, 40.0, (3, 12, 10))
    network = StyleNetwork(weights64, STYLE_LAYERS)
    features = network.tap_features(x)
    expected = naive.vgg_levels(weights64, x, vgg.CONV_LAYERS)
    for level, layer in enumerate(STYLE_LAYERS, start=1):
        np.testing.assert_allclose(
            features[layer], expected[level].reshape(features[layer].shape), rtol=1e-10, atol=1e-9
        )
    # The network stops at the deepest tap.
    assert StyleNetwork(weights64, ("relu2_1",)).layers[-1] == "conv2_1"


@pytest.fixture(scope="module")
def tiny_styler(tiny_model):
    model = AnalogyModel(tiny_model, CPU)
    style = cv2.applyColorMap(photo()[:40, :48, 1], cv2.COLORMAP_JET)
    return model, style


def test_a_short_run_lowers_the_loss(tiny_styler):
    model, style = tiny_styler
    image = np.ascontiguousarray(photo()[100:136, 80:128])
    for init in ("content", "noise"):
        styler = NeuralStyler(model, style, NeuralStyleParams(iterations=8, init=init))
        output, result = stylise_image(styler, image)
        losses = result.lbfgs.losses
        assert result.lbfgs.iterations == 8
        assert losses[-1] < 0.5 * losses[0]
        assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
        assert output.shape == image.shape and output.dtype == np.uint8
        assert np.abs(output.astype(int) - image).mean() > 1.0  # something was painted


def test_colour_preservation_keeps_the_image_chroma(tiny_styler):
    model, style = tiny_styler
    image = np.ascontiguousarray(photo()[100:136, 80:128])
    plain = NeuralStyler(model, style, NeuralStyleParams(iterations=6))
    kept = NeuralStyler(model, style, NeuralStyleParams(iterations=6, preserve_colour=True))
    stylised, _ = stylise_image(plain, image, output_shape=(54, 72))
    coloured, _ = stylise_image(kept, image, output_shape=(54, 72))
    original = cv2.resize(image, (72, 54), interpolation=cv2.INTER_CUBIC)
    # a*, b* are the image's up to the rounding of the uint8 output ...
    difference = np.abs(lab_chroma(coloured) - lab_chroma(original))
    assert np.median(difference) < 0.5
    assert np.abs(lab_chroma(stylised) - lab_chroma(original)).mean() > 4 * difference.mean()
    # ... and the lightness is the stylised one.
    assert np.median(np.abs(lab(coloured)[..., 0] - lab(stylised)[..., 0])) < 1.0


def test_params_are_checked():
    with pytest.raises(ValueError, match="style_layer_weights"):
        NeuralStyleParams(style_layer_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="long_term"):
        NeuralStyleParams(long_term=(1, 3))
    with pytest.raises(ValueError, match="content_layer"):
        NeuralStyleParams(content_layer="conv4_2")
    for name in ("style_weight", "tv_weight", "temporal_weight"):
        with pytest.raises(ValueError, match=name):
            NeuralStyleParams(**{name: float("inf")})
    with pytest.raises(ValueError, match="style_layer_weights"):
        NeuralStyleParams(style_layer_weights=(float("nan"), 1.0, 1.0, 1.0, 1.0))
    cuda, cpu = NeuralStyleParams.for_device("cuda"), NeuralStyleParams()
    assert cuda.later_iterations > cpu.later_iterations
    assert NeuralStyleParams(long_term=(4, 2, 2)).long_term == (2, 4)
    assert NeuralStyleParams().fingerprint()["method"] == "neural-style"


def _images(tmp_path):
    image, style = tmp_path / "image.png", tmp_path / "style.png"
    cv2.imwrite(str(image), photo()[100:148, 80:144])
    cv2.imwrite(str(style), cv2.applyColorMap(photo()[:40, :48, 1], cv2.COLORMAP_JET))
    return image, style


def test_stylise_command_writes_the_image_at_its_size(tmp_path, tiny_model):
    image, style = _images(tmp_path)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(cli, ["stylise", str(style), str(image), "-o", str(out),
                                      "--model", str(tiny_model), "--first-iters", "3",
                                      "--work-size", "48", "--preserve-colour"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 L-BFGS iterations" in result.output
    assert load_image(out).shape == (48, 64, 3)
    again = CliRunner().invoke(cli, ["stylise", str(style), str(image), "-o", str(out),
                                     "--model", str(tiny_model)])  # fmt: skip
    assert "exists" in assert_one_error(again, again.exit_code)
    odd_output = str(tmp_path / "out.xyz")
    odd = CliRunner().invoke(
        cli, ["stylise", str(style), str(image), "-o", odd_output, "--model", str(tiny_model)]
    )
    assert ".png" in assert_one_error(odd, 5)


def test_stylise_refuses_bad_layer_weights(tmp_path, tiny_model):
    image, style = _images(tmp_path)
    out = str(tmp_path / "o.png")
    result = CliRunner().invoke(
        cli, ["stylise", str(style), str(image), "-o", out, "--style-layer-weights", "1,2"]
    )
    assert result.exit_code == 2
    assert "expected 5 comma-separated numbers" in result.output
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--style-weight", "inf"),
        ("--tv-weight", "nan"),
        ("--style-layer-weights", "inf,1,1,1,1"),
        ("--style-layer-weights", "nan,1,1,1,1"),
        ("--mask-feather", "inf"),
    ],
)
def test_stylise_refuses_non_finite_weights(tmp_path, tiny_model, option, value):
    image, style = _images(tmp_path)
    out = tmp_path / "o.png"
    result = CliRunner().invoke(cli, ["stylise", str(style), str(image), "-o", str(out),
                                      "--model", str(tiny_model), option, value])  # fmt: skip
    assert option in assert_one_error(result, 2)
    assert not out.exists()


def test_a_loss_that_overflows_is_an_error_not_the_input(tmp_path, tiny_model):
    image, style = _images(tmp_path)
    out = tmp_path / "o.png"
    result = CliRunner().invoke(cli, ["stylise", str(style), str(image), "-o", str(out),
                                      "--model", str(tiny_model), "--first-iters", "2",
                                      "--work-size", "48", "--tv-weight", "1e308"])  # fmt: skip
    assert "loss is not finite" in assert_one_error(result, 1)
    assert not out.exists()


def test_the_command_line_uses_the_library_defaults():
    from diva_numba.cli.stylise_command import neural_params

    options = {"style_weight": 20.0, "content_layer": "relu4_2", "tv_weight": 1.0,
               "init": "content", "preserve_colour": False, "mask_feather": 8.0, "seed": 0,
               "style_layer_weights": None, "first_iters": None, "later_iters": None,
               "long_term": None, "temporal_loss_weight": 20000.0, "size": None,
               "work_size": None}  # fmt: skip
    for kind in ("cpu", "cuda"):
        assert neural_params(Device(kind, kind), options) == NeuralStyleParams.for_device(kind)
    text = " ".join(CliRunner().invoke(cli, ["stylise", "--help"]).output.split())
    assert "512 on a GPU, 256 on the CPU" in text and "500 on a GPU, 200 on the CPU" in text


def test_stylise_keeps_the_image_outside_the_mask(tmp_path, tiny_model):
    image, style = _images(tmp_path)
    mask = np.zeros((48, 64), np.uint8)
    mask[:, 32:] = 255
    mask_path = tmp_path / "mask.png"
    cv2.imwrite(str(mask_path), mask)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(cli, ["stylise", str(style), str(image), "-o", str(out),
                                      "--model", str(tiny_model), "--first-iters", "3",
                                      "--mask", str(mask_path), "--mask-feather", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    made, original = load_image(out), load_image(image)
    np.testing.assert_array_equal(made[:, :32], original[:, :32])
    assert np.abs(made[:, 32:].astype(int) - original[:, 32:]).mean() > 1.0
