"""`diva-numba analogy` through click's runner, on a tiny random-weight model."""

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from diva_numba.cli import cli

FAST = ["--iters", "2", "--lbfgs-iters", "2"]


def write(path, image):
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def pair(tmp_path, rng):
    a = cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3)).astype(np.uint8), (0, 0), 2)
    bp = cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8), (0, 0), 2)
    return write(tmp_path / "a.png", a), write(tmp_path / "bp.png", bp)


def run(args, model):
    return CliRunner().invoke(cli, ["analogy", *args, "--model", str(model), *FAST])


def test_writes_images_and_fields_at_input_size(pair, tmp_path, tiny_model):
    a, bp = pair
    out = tmp_path / "out"
    result = run([str(a), str(bp), "-o", str(out), "--save-levels", "--profile", "--refine"],
                 tiny_model)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out / "A_prime.png")).shape == (48, 64, 3)
    assert cv2.imread(str(out / "B.png")).shape == (40, 40, 3)
    nnf_ab, nnf_ba = np.load(out / "nnf_ab.npy"), np.load(out / "nnf_ba.npy")
    assert nnf_ab.shape == (48, 64, 2) and nnf_ab.dtype == np.int32
    assert nnf_ba.shape == (40, 40, 2) and nnf_ba.dtype == np.int32
    assert nnf_ab[..., 0].max() < 40 and nnf_ab[..., 1].max() < 40
    assert nnf_ba[..., 0].max() < 48 and nnf_ba[..., 1].max() < 64
    for level in range(1, 6):
        assert (out / f"nnf_ab_level{level}.npy").is_file()
        assert (out / f"nnf_ba_level{level}.png").is_file()
    assert "deconvolution" in result.output and "refine" in result.output


def test_existing_output_is_refused_then_replaced(pair, tmp_path, tiny_model):
    a, bp = pair
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run([str(a), str(bp), "-o", str(out)], tiny_model)
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only what the tool wrote: a folder of the user's is kept.
    result = run([str(a), str(bp), "-o", str(out), "--overwrite"], tiny_model)
    assert result.exit_code == 5 and "did not write (keep.txt)" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run([str(a), str(bp), "-o", str(out), "--overwrite"], tiny_model).exit_code == 0
    first = (out / "A_prime.png").stat().st_ino
    result = run([str(a), str(bp), "-o", str(out), "--overwrite"], tiny_model)
    assert result.exit_code == 0, result.output
    assert (out / "A_prime.png").stat().st_ino != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_unusual_pixel_formats_are_converted(tmp_path, rng, tiny_model):
    grey = write(tmp_path / "grey.png", rng.integers(0, 255, (40, 40)).astype(np.uint8))
    rgba = np.concatenate([rng.integers(0, 255, (40, 40, 3)), np.full((40, 40, 1), 128)], 2)
    rgba = write(tmp_path / "rgba.png", rgba.astype(np.uint8))
    deep = write(tmp_path / "deep.png", rng.integers(0, 65535, (40, 40, 3)).astype(np.uint16))
    result = run([str(grey), str(rgba), "-o", str(tmp_path / "o1")], tiny_model)
    assert result.exit_code == 0, result.output
    assert "transparency" in result.output
    result = run([str(deep), str(grey), "-o", str(tmp_path / "o2")], tiny_model)
    assert result.exit_code == 0, result.output
    assert "16-bit" in result.output


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "truncated", "tiny"])
def test_bad_images_are_one_line_errors(kind, pair, tmp_path, tiny_model):
    a, bp = pair
    bad = tmp_path / "bad.png"
    if kind == "directory":
        bad.mkdir()
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("this is not a picture")
    elif kind == "truncated":
        bad.write_bytes(a.read_bytes()[:200])
    elif kind == "tiny":
        write(bad, np.zeros((20, 200, 3), np.uint8))
    result = run([str(bad), str(bp), "-o", str(tmp_path / "out")], tiny_model)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert not (tmp_path / "out").exists()


def test_huge_image_is_scaled_to_the_area_limit(tmp_path, rng, tiny_model):
    huge = write(tmp_path / "huge.png", np.zeros((700, 800, 3), np.uint8) + 90)
    small = write(tmp_path / "small.png", rng.integers(0, 255, (40, 40, 3)).astype(np.uint8))
    result = run([str(huge), str(small), "-o", str(tmp_path / "out"), "--size", "800",
                  "--work-size", "800"], tiny_model)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "area limit" in result.output
    assert cv2.imread(str(tmp_path / "out" / "A_prime.png")).shape == (700, 800, 3)


def test_alpha_is_validated(pair, tmp_path, tiny_model):
    a, bp = pair
    result = run([str(a), str(bp), "-o", str(tmp_path / "o"), "--alpha", "0.8,2"], tiny_model)
    assert result.exit_code == 2 and "four numbers" in result.output


@pytest.mark.parametrize(
    ("size", "long_side", "notice"),
    [((720, 1280), None, None), ((720, 1280), 320, None),
     ((720, 1280), 1200, "a working size of 1200x675 is above the area limit; working at"),
     ((300, 400), 1200, "a working size of 1200x900 is above the area limit; working at")],
)  # fmt: skip
def test_the_area_notice_only_when_the_limit_shrinks_the_image(size, long_side, notice, caplog):
    from diva_numba.gpu.device import resolve_device
    from diva_numba.run.analogy_files import working_shape

    image = np.zeros((*size, 3), np.uint8)
    with caplog.at_level("WARNING", logger="diva_numba"):
        shape = working_shape(image, device=resolve_device("cpu"), long_side=long_side,
                              ratio=1.0, name="image.png")  # fmt: skip
    notices = [r.getMessage() for r in caplog.records if "area limit" in r.getMessage()]
    if notice is None:
        assert notices == []
    else:
        assert len(notices) == 1 and notices[0].startswith(f"image.png: {notice}"), notices
    assert (max(shape) < long_side) if notice else (max(shape) == (long_side or 320))
