"""The same frames encode to the same file, whatever else the process did before.

x264's AVX-512 routines made an encode depend on the process's history: the
frames of the bundled example, encoded again and again, came out differently
after unrelated allocations and between processes (diva_numba/video/x264.py).
These tests encode the bundled clip's frames (a real 320 x 180 clip: the case
that showed it) several times, in this process between allocations of random
sizes and contents and with pauses between frames, and in a fresh process, and
compare the files byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diva_numba.video import VideoWriter, probe_video, read_frames
from diva_numba.video.x264 import EXCLUDED_ROUTINES, detected_routines, x264_options

CLIP = Path(__file__).resolve().parents[1] / "tools" / "example" / "clip.mp4"
FRAMES = 24
ENCODES = 6


def encode(path: Path, frames: list[np.ndarray], fps, *, pause: float = 0.0) -> str:
    """Encode ``frames`` to ``path``; the SHA-256 of the file."""
    height, width = frames[0].shape[:2]
    with VideoWriter(path, width=width, height=height, fps=fps, overwrite=True) as writer:
        for index, frame in enumerate(frames):
            writer.write(frame)
            if pause and index % 5 == 0:
                time.sleep(pause)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def disturb_heap(rng: np.random.Generator) -> None:
    """Allocate and free buffers of random sizes holding random bytes."""
    junk = [os.urandom(int(size)) for size in rng.integers(1_000, 3_000_000, size=40)]
    del junk


# Runs in a fresh interpreter: the hash of the clip's first frames, encoded there.
_ENCODE_ELSEWHERE = f"""
import hashlib, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_video_determinism import CLIP, FRAMES, encode
from diva_numba.video import probe_video, read_frames
frames = [frame for _, frame in read_frames(CLIP, end=FRAMES)]
print(encode(Path(sys.argv[1]), frames, probe_video(CLIP).fps))
"""


@pytest.mark.slow
def test_the_same_frames_always_encode_to_the_same_file(tmp_path, rng):
    frames = [frame for _, frame in read_frames(CLIP, end=FRAMES)]
    fps = probe_video(CLIP).fps
    hashes = []
    for attempt in range(ENCODES):
        disturb_heap(rng)
        hashes.append(encode(tmp_path / "out.mp4", frames, fps, pause=0.02 * (attempt % 2)))
    elsewhere = subprocess.run(
        [sys.executable, "-c", _ENCODE_ELSEWHERE, str(tmp_path / "elsewhere.mp4")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert set(hashes) == {elsewhere}, f"{len(set(hashes + [elsewhere]))} different files"


def test_x264_is_kept_off_the_excluded_routines():
    detected = detected_routines()
    options = x264_options()
    if EXCLUDED_ROUTINES & set(detected):
        used = options["x264-params"].removeprefix("asm=").split(",")
        assert set(used) == set(detected) - EXCLUDED_ROUTINES
    else:
        assert options == {}
