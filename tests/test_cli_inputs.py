"""Every kind of input a user can hand `transfer` and `analogy`, and what each must do.

Unusable files end in one `Error:` line and a non-zero exit before any work
starts; unusual but usable ones (odd sizes, rotation flags, palettes,
elongated styles) are converted, with a notice where information is lost.
"""

import struct
import zlib
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner
from clips import pan_frames, write_clip
from PIL import Image, ImageOps

from diva_numba.cli import cli
from diva_numba.images import header_size, load_image
from diva_numba.video import probe_video

FAST = ["--iters", "2", "--lbfgs-iters", "2"]
FAST_VIDEO = [*FAST, "--guided-iters", "1", "--guided-lbfgs-iters", "1"]


def invoke(command, args, model):
    fast = FAST_VIDEO if command == "transfer" else FAST
    return CliRunner().invoke(cli, [command, *args, "--model", str(model), *fast])


@pytest.fixture
def style(tmp_path, rng):
    image = cv2.GaussianBlur(rng.integers(0, 255, (40, 56, 3)).astype(np.uint8), (0, 0), 2)
    path = tmp_path / "style.png"
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, pan_frames(4, width=64, height=48), fps=Fraction(25))
    return path


# --- unusable videos ------------------------------------------------------------------------


def audio_only(path, *, with_empty_video: bool = False):
    """An AAC file; Matroska can also hold a video stream that has no frames."""
    with av.open(
        str(path), mode="w", format="matroska" if with_empty_video else "mp4"
    ) as container:
        if with_empty_video:
            video = container.add_stream("libx264", rate=25)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        stream = container.add_stream("aac", rate=48000)
        stream.layout = "mono"
        samples = np.zeros((1, 1024), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


BAD_CLIPS = {
    "missing": (None, 2, "does not exist"),
    "directory": (lambda p: p.mkdir(), 2, "is a directory"),
    "empty": (lambda p: p.write_bytes(b""), 2, "is empty"),
    "text": (lambda p: p.write_text("not a video at all\n" * 20), 2, "not a video file"),
    "truncated": ("truncate", 2, "truncated"),
    "no video stream": (audio_only, 2, "has no video stream"),
    "zero frames": (lambda p: audio_only(p, with_empty_video=True), 2, "has no frames"),
}


@pytest.mark.parametrize("kind", BAD_CLIPS)
def test_unusable_clips_are_one_line_errors(kind, clip, style, tmp_path, tiny_model):
    make, exit_code, message = BAD_CLIPS[kind]
    bad = tmp_path / "bad.mp4"
    if make == "truncate":
        bad.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    elif make is not None:
        make(bad)
    out = tmp_path / "out.mp4"
    line = assert_one_error(invoke("transfer", [str(style), str(bad), "-o", str(out)],
                                   tiny_model), exit_code)  # fmt: skip
    assert message in line, line
    assert not out.exists() and not (tmp_path / "out.mp4.work").exists()


def test_unusable_style_is_refused_before_any_work(clip, tmp_path, tiny_model):
    bad = tmp_path / "style.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "out.mp4"
    line = assert_one_error(
        invoke("transfer", [str(bad), str(clip), "-o", str(out)], tiny_model), 2
    )
    assert "not a readable image" in line
    assert not (tmp_path / "out.mp4.work").exists()


# --- unusual but usable videos -----------------------------------------------------------------


def test_odd_sized_clip_gives_an_even_sized_video(style, tmp_path, rng, tiny_model):
    frames = pan_frames(3, width=65, height=49)
    path = tmp_path / "odd.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 65, 49, "yuv444p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    out = tmp_path / "out.mp4"
    result = invoke("transfer", [str(style), str(path), "-o", str(out)], tiny_model)
    assert result.exit_code == 0, result.output
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (64, 48, 3)


def test_rotation_flag_gives_an_upright_video(style, tmp_path, tiny_model):
    frames = pan_frames(3, width=64, height=48)
    path = tmp_path / "phone.mp4"
    write_clip(path, frames, fps=25, rotation=90)
    assert probe_video(path).rotation == 90
    out = tmp_path / "out.mp4"
    result = invoke("transfer", [str(style), str(path), "-o", str(out)], tiny_model)
    assert result.exit_code == 0, result.output
    info = probe_video(out)
    # Stored upright: no rotation left for players to apply (or to ignore).
    assert (info.width, info.height, info.rotation) == (48, 64, 0)


def test_elongated_style_keeps_its_aspect(clip, tmp_path, rng, tiny_model):
    wide = tmp_path / "banner.png"
    cv2.imwrite(str(wide), rng.integers(0, 255, (40, 1000, 3)).astype(np.uint8))
    out = tmp_path / "out.mp4"
    result = invoke("transfer", [str(wide), str(clip), "-o", str(out), "--size", "64"], tiny_model)
    assert result.exit_code == 0, result.output
    assert probe_video(out).frame_count == 4


def test_too_elongated_style_is_refused(clip, tmp_path, tiny_model):
    thread = tmp_path / "thread.png"
    cv2.imwrite(str(thread), np.full((32, 12000, 3), 128, np.uint8))
    out = tmp_path / "out.mp4"
    line = assert_one_error(invoke("transfer", [str(thread), str(clip), "-o", str(out)],
                                   tiny_model), 2)  # fmt: skip
    assert "too elongated" in line and "crop it" in line


# --- images --------------------------------------------------------------------------------


def palette_png(path, rgb: np.ndarray, *, transparent: bool) -> None:
    image = Image.fromarray(rgb).quantize(colors=16)
    if transparent:
        image.save(path, transparency=0)
    else:
        image.save(path)


@pytest.mark.parametrize("transparent", [False, True], ids=["opaque", "transparent"])
def test_palette_png_is_converted(transparent, tmp_path, rng, tiny_model):
    rgb = cv2.GaussianBlur(rng.integers(0, 255, (40, 48, 3)).astype(np.uint8), (0, 0), 2)
    path = tmp_path / "palette.png"
    palette_png(path, rgb, transparent=transparent)
    with Image.open(path) as stored:
        assert stored.mode == "P"
        expected = np.asarray(stored.convert("RGB"))
        opaque = np.asarray(stored.convert("RGBA"))[:, :, 3] == 255
    image = load_image(path)
    assert image.shape == (40, 48, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[opaque], expected[opaque])
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), rgb)
    result = invoke("analogy", [str(path), str(other), "-o", str(tmp_path / "out")], tiny_model)
    assert result.exit_code == 0, result.output
    assert ("transparency dropped" in result.output) == transparent


def huge_png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A highly compressed all-black PNG of any size; only ``rows`` rows of data if given."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    count = height if rows is None else rows
    data = b"".join(compressor.compress(row) for _ in range(count)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_its_header(tmp_path, style, tiny_model):
    bomb = tmp_path / "bomb.png"
    # Refused from the header alone: the pixel data need not even be complete.
    bomb.write_bytes(huge_png(16000, 16000, rows=16))
    assert header_size(np.fromfile(bomb, np.uint8)) == (16000, 16000)
    out = tmp_path / "out"
    line = assert_one_error(invoke("analogy", [str(bomb), str(style), "-o", str(out)],
                                   tiny_model), 2)  # fmt: skip
    assert "16000x16000 is too large to decode safely" in line and not out.exists()


def test_large_image_is_decoded_at_reduced_size(tmp_path, caplog):
    large = tmp_path / "large.png"
    large.write_bytes(huge_png(5000, 3000))
    assert load_image(large).shape == (1500, 2500, 3)
    assert "5000x3000 decoded at 1/2 size" in caplog.text


def test_jpeg_header_size(tmp_path, rng):
    image = rng.integers(0, 255, (37, 53, 3)).astype(np.uint8)
    for options in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        ok, encoded = cv2.imencode(".jpg", image, options)
        assert ok and header_size(encoded.ravel()) == (53, 37)
    assert header_size(np.frombuffer(b"\xff\xd8\xff", np.uint8)) is None
    assert header_size(np.frombuffer(b"GIF89a" + bytes(30), np.uint8)) is None


@pytest.mark.parametrize("reduced", [False, True], ids=["full", "reduced"])
def test_jpeg_orientation_is_applied(reduced, tmp_path, rng, caplog):
    """A portrait phone photo is stored landscape with an EXIF rotation: load it upright."""
    height, width = (2000, 3000) if reduced else (40, 64)
    stored = cv2.resize(rng.integers(0, 255, (10, 16, 3)).astype(np.uint8), (width, height))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    with Image.open(path) as image:
        upright = np.asarray(ImageOps.exif_transpose(image))
    loaded = load_image(path)
    assert ("decoded at 1/2 size" in caplog.text) == reduced
    if reduced:
        loaded = cv2.resize(loaded, upright.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    assert loaded.shape == upright.shape == (width, height, 3)
    assert np.abs(loaded.astype(int) - upright).mean() < 4


@pytest.mark.parametrize(
    ("extra", "capped_at"),
    [(["--work-size", "200"], 64), (["--work-size", "200", "--size", "96"], 96),
     (["--work-size", "64"], None), ([], None)],
)  # fmt: skip
def test_a_work_size_above_the_output_says_where_it_is_capped(
    extra, capped_at, style, clip, tmp_path, tiny_model
):
    out = tmp_path / "out.mp4"
    result = invoke("transfer", [str(style), str(clip), "-o", str(out), "--end", "2", *extra],
                    tiny_model)  # fmt: skip
    assert result.exit_code == 0, result.output
    notices = [line for line in result.stderr.splitlines() if "is above the output's" in line]
    if capped_at is None:
        assert notices == []
    else:
        assert notices == [
            f"diva-numba: --work-size 200 is above the output's long side ({capped_at}), so "
            f"the frames are worked on at {capped_at}; for finer detail on a small clip "
            "enlarge the output too: --size 200 --work-size 200"
        ]
    assert probe_video(out).width == (capped_at or 64)


def rgba_png(path, height: int, width: int) -> None:
    """A white-to-black ramp, half transparent: a usable image whose alpha is dropped."""
    ramp = np.linspace(255, 0, width, dtype=np.uint8)[None, :].repeat(height, axis=0)
    alpha = np.full((height, width), 128, np.uint8)
    cv2.imwrite(str(path), np.dstack([ramp, ramp, ramp, alpha]))


def test_input_notices_are_said_once_and_not_under_quiet(clip, tmp_path, tiny_model):
    style, mask = tmp_path / "style_rgba.png", tmp_path / "mask_rgba.png"
    rgba_png(style, 40, 56)
    rgba_png(mask, 48, 64)
    args = [str(style), str(clip), "-o", str(tmp_path / "out.mp4"), "--mask", str(mask)]
    said = invoke("transfer", args, tiny_model)
    assert said.exit_code == 0, said.output
    for name in ("style_rgba.png", "mask_rgba.png"):
        assert said.stderr.count(f"{name}: transparency dropped") == 1, said.stderr
    quiet = invoke("transfer", [*args, "--overwrite", "-q"], tiny_model)
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""


def test_analogy_input_notices_are_not_said_under_quiet(tmp_path, rng, tiny_model):
    deep = tmp_path / "deep.png"
    image = cv2.GaussianBlur(rng.integers(0, 65535, (40, 48, 3)).astype(np.uint16), (0, 0), 2)
    cv2.imwrite(str(deep), image)
    args = [str(deep), str(deep), "-o", str(tmp_path / "out")]
    said = invoke("analogy", args, tiny_model)
    assert said.exit_code == 0, said.output
    assert "16-bit image reduced" in said.stderr
    quiet = invoke("analogy", [*args, "--overwrite", "-q"], tiny_model)
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""


def test_stylise_says_how_it_went_on_standard_error_and_nothing_under_quiet(
    tmp_path, rng, tiny_model
):
    deep = tmp_path / "deep.png"
    image = cv2.GaussianBlur(rng.integers(0, 65535, (40, 48, 3)).astype(np.uint16), (0, 0), 2)
    cv2.imwrite(str(deep), image)
    out = tmp_path / "out.png"
    args = ["stylise", str(deep), str(deep), "-o", str(out), "--model", str(tiny_model),
            "--first-iters", "2", "--work-size", "48"]  # fmt: skip
    said = CliRunner().invoke(cli, args)
    assert said.exit_code == 0, said.output
    assert said.stdout == f"{out}\n"
    assert "16-bit image reduced" in said.stderr and "2 L-BFGS iterations" in said.stderr
    quiet = CliRunner().invoke(cli, [*args, "--overwrite", "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert (quiet.stdout, quiet.stderr) == (f"{out}\n", "")


@pytest.mark.parametrize(
    ("width", "height", "work_size", "larger"),
    [(96, 24, "128", "--size"), (96, 24, "32", "--size"), (192, 48, "64", "--work-size")],
)
def test_too_small_frames_name_the_option_that_helps(style, tmp_path, tiny_model, width, height,
                                                     work_size, larger):  # fmt: skip
    # The working size never exceeds the output's: frames too small even at the output
    # size need a larger --size; others a larger --work-size.
    path = tmp_path / "wide.mp4"
    write_clip(path, pan_frames(3, width=width, height=height), fps=Fraction(25))
    args = [str(style), str(path), "-o", str(tmp_path / "o.mp4"), "--work-size", work_size]
    line = assert_one_error(invoke("transfer", args, tiny_model), 2)
    assert "too small" in line and line.endswith(f"ask for a larger {larger}")


@pytest.mark.parametrize("command", ["analogy", "stylise"])
def test_a_too_small_working_size_of_an_image_asks_for_a_larger_work_size(
    command, style, tmp_path, rng, tiny_model
):
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), rng.integers(0, 255, (40, 400, 3)).astype(np.uint8))
    args = [str(style), str(wide), "-o", str(tmp_path / "out.png"), "--work-size", "64"]
    fast = FAST if command == "analogy" else ["--first-iters", "1"]
    result = CliRunner().invoke(cli, [command, *args, "--model", str(tiny_model), *fast])
    line = assert_one_error(result, 2)
    assert "below the minimum" in line and line.endswith("ask for a larger --work-size")
