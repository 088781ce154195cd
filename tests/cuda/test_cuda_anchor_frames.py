"""Anchor frames (the default video path) on the simulated GPU: the CPU's frames, resumable.

A carried frame moves its anchor's fields on the device (the working field, the
output field into the style image) while the flows and guides are made on the host;
an anchor frame is seeded from the previous anchor's state on the device. Both must
give the CPU's frames, and a run resumed after a carried frame (its anchor read back
from disk and uploaded) the uninterrupted run's.
"""

from fractions import Fraction

import cv2
import numpy as np
from clips import pan_frames, write_clip

from diva_numba.image_analogy.deep_analogy import AnalogyParams
from diva_numba.images import load_image
from diva_numba.run.anchor_frames import AnchorParams
from diva_numba.run.transfer import TransferParams, transfer_video

FRAMES = 5
#: Share of pixels in which the GPU's frames may differ from the CPU's: float32 sums in
#: another order flip a few ties between equally good matches.
MISMATCH_SHARE = 0.02
#: Anchors at frames 0, 2 and 4; frames 1 and 3 carried.
PARAMS = TransferParams(
    analogy=AnalogyParams(patchmatch_iterations=1, lbfgs_iterations=1),
    work_size=48,
    guided_patchmatch_iterations=1,
    guided_lbfgs_iterations=1,
    anchors=AnchorParams(max_spacing=2),
)


def _frames(directory):
    return [load_image(directory / f"{index:06d}.png") for index in range(FRAMES)]


def test_anchor_frames_on_the_gpu_match_the_cpu_and_resume(gpu, cpu, tmp_path, tiny_model,
                                                            keep_work_after):  # fmt: skip
    device, _ = gpu
    frames = pan_frames(FRAMES, width=48, height=32, step=(1, 2))
    clip, style = tmp_path / "clip.mp4", tmp_path / "style.png"
    write_clip(clip, frames, fps=Fraction(25))
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))

    kinds = []
    kept = tmp_path / "after_frame_3"
    keep_work_after(3, kept)
    transfer_video(style, clip, tmp_path / "gpu.mp4", PARAMS, device=device, model=tiny_model,
                   keep_frames=tmp_path / "gpu",
                   on_frame=lambda report: kinds.append(report.kind))  # fmt: skip
    assert kinds == ["full", "carried", "anchor", "carried", "anchor"]
    transfer_video(style, clip, tmp_path / "cpu.mp4", PARAMS, device=cpu, model=tiny_model,
                   keep_frames=tmp_path / "cpu")  # fmt: skip
    transfer_video(style, clip, tmp_path / "resumed.mp4", PARAMS, device=device,
                   model=tiny_model, work_dir=kept, resume=True,
                   keep_frames=tmp_path / "resumed")  # fmt: skip

    gpu_frames = _frames(tmp_path / "gpu")
    np.testing.assert_array_equal(_frames(tmp_path / "resumed")[4], gpu_frames[4])
    for index, (got, want) in enumerate(zip(gpu_frames, _frames(tmp_path / "cpu"), strict=True)):
        differing = np.abs(got.astype(int) - want).max(axis=-1) > 0
        assert differing.mean() <= MISMATCH_SHARE, (index, differing.mean())
