"""`diva-numba transfer` holds a constant amount of memory, whatever the clip's length.

Frames are decoded, stylised, saved and encoded one at a time, so a clip four
times as long must reach the same peak resident memory, up to allocator noise.
Each run is a fresh process; its peak is the ``ru_maxrss`` that a small parent
of its own reads (a child's ``ru_maxrss`` starts from its parent's peak, so
pytest's would hide the run's).
"""

import subprocess
import sys

import cv2
import pytest
from clips import pan_frames, write_clip

from diva_numba.video import probe_video

WIDTH, HEIGHT = 320, 180
FRAME_BYTES = WIDTH * HEIGHT * 3
#: Frames of the short and the long run. Measured peaks with anchor frames every 6
#: frames: 332, 334, 336 and 335 MB at 12, 24, 48 and 96 frames; with glibc's mmap
#: threshold fixed (``MALLOC_MMAP_THRESHOLD_=65536``, which stops its heap from taking
#: the frame-sized temporaries that its moving threshold sends there) 328.7, 328.9 and
#: 329.5 MB at 24, 48 and 96: what rises up to 48 frames is the allocator settling, not
#: the run keeping anything, so the short run starts after it. (With the anchors
#: deconvolving, 20 L-BFGS iterations each, the peaks kept rising by 1.8 MB from 48 to
#: 96 frames here and by 5 MB on another machine; the frames here run no
#: deconvolution. The photo under the pan holds at most 96 frames.)
SHORT, LONG = 48, 96
# Anchor frames every 6 frames in both runs: carried frames alone would not reach the
# peak of a seeded analogy, which the long run makes every 24 frames by default.
FAST = ["--iters", "1", "--guided-iters", "1", "--lbfgs-iters", "0", "--guided-lbfgs-iters", "0",
        "--anchor-spacing", "6"]  # fmt: skip
DIVA = [sys.executable, "-m", "diva_numba"]
#: Runs argv as a child and prints its exit status and peak RSS in bytes.
PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=sys.stderr)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(code, peak if sys.platform == "darwin" else peak * 1024)
"""


def peak_rss(command: list[str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True
    )
    code, peak = (int(word) for word in done.stdout.split())
    assert code == 0, done.stderr[-2000:]
    return peak


def transfer_peak(tmp_path, tiny_model, count: int) -> int:
    frames = pan_frames(count, width=WIDTH, height=HEIGHT, origin=(0, 0))
    clip, out, style = (
        tmp_path / f"clip{count}.mp4",
        tmp_path / f"out{count}.mp4",
        tmp_path / "s.png",
    )
    write_clip(clip, frames, fps=30, audio_seconds=count / 30)
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    peak = peak_rss([*DIVA, "transfer", str(style), str(clip), "-o", str(out), "--size",
                     str(WIDTH), "--device", "cpu", "--model", str(tiny_model), *FAST])  # fmt: skip
    assert probe_video(out).frame_count == count
    return peak


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_frames(tmp_path, tiny_model):
    short = transfer_peak(tmp_path, tiny_model, SHORT)
    long = transfer_peak(tmp_path, tiny_model, LONG)
    # NumPy, Numba, ONNX Runtime and PyAV alone take over 200 MB: a smaller peak
    # would be the measuring parent's, not the run's.
    assert min(short, long) > 150e6
    # Keeping one output frame per frame adds LONG - SHORT frames to the long run's
    # peak, 8.3 MB; run-to-run noise of the peak is under 2 MB.
    kept_per_frame = (LONG - SHORT) * FRAME_BYTES
    assert long - short < kept_per_frame / 2, (short, long)
