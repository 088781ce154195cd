"""The run specification: built once, frozen, one fingerprint per run, small to ship."""

import dataclasses
import pickle
from fractions import Fraction

import cv2
import numpy as np
import pytest
from clips import pan_frames, write_clip

from diva_numba import Keyframe, RunSpec, ScaleOut, TransferParams, resolve_device, transfer_video
from diva_numba.image_analogy.params import AnalogyParams
from diva_numba.run.planning import plan_transfer
from diva_numba.run.spec import RunSpec as SpecClass

PARAMS = TransferParams.for_device(
    "cpu",
    work_size=48,
    analogy=AnalogyParams.for_device("cpu", patchmatch_iterations=1, lbfgs_iterations=1),
    guided_patchmatch_iterations=1,
    guided_lbfgs_iterations=0,
)


@pytest.fixture
def inputs(tmp_path):
    frames = pan_frames(3, width=64, height=48)
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames, fps=Fraction(25))
    style = tmp_path / "style.png"
    cv2.imwrite(str(style), cv2.applyColorMap(frames[0][:, :, 1], cv2.COLORMAP_JET))
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.full((48, 64), 255, np.uint8))
    return style, clip, mask


def test_the_spec_is_frozen_and_pickles_without_arrays(inputs):
    style, clip, mask = inputs
    spec = RunSpec.make(style, clip, PARAMS, device=resolve_device("cpu"),
                        keys=[Keyframe(0, style)], mask=mask, scale_out=ScaleOut())  # fmt: skip
    assert RunSpec is SpecClass
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.mask = None
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert len(pickle.dumps(spec)) < 8192
    assert spec.inputs() == [style, clip, style, mask]


def test_the_manifest_holds_what_decides_the_frames(inputs):
    style, clip, mask = inputs
    device = resolve_device("cpu")
    plain = RunSpec.make(style, clip, PARAMS, device=device)
    plan = plan_transfer(style, clip, PARAMS, start=0, end=None)
    manifest = plain.manifest(plan, device)
    assert "finish" not in manifest and "scale_out" not in manifest
    assert manifest["params"] == PARAMS.fingerprint()
    assert manifest["params"]["cuts"]["threshold"] == PARAMS.cuts.threshold
    masked = dataclasses.replace(plain, mask=mask, scale_out=ScaleOut(chunk_frames=10))
    other = masked.manifest(plan, device)
    assert other["finish"]["mask"][1] == PARAMS.mask_feather
    assert other["scale_out"] == {"chunk_frames": 10, "overlap": 8}
    # How many workers make the frames does not decide them.
    more = dataclasses.replace(masked, scale_out=ScaleOut(workers=5, chunk_frames=10))
    assert more.manifest(plan, device) == other


def test_a_run_fingerprints_its_inputs_once(inputs, tmp_path, tiny_model, monkeypatch):
    style, clip, _ = inputs
    calls = []
    real = SpecClass.manifest

    def counted(self, plan, device):
        calls.append(device.kind)
        return real(self, plan, device)

    monkeypatch.setattr(SpecClass, "manifest", counted)
    result = transfer_video(style, clip, tmp_path / "out.mp4", PARAMS, device="cpu",
                            model=tiny_model)  # fmt: skip
    assert result.frames == 3
    assert calls == ["cpu"]


def test_the_trial_encode_and_the_real_one_share_their_settings(inputs, monkeypatch):
    import diva_numba.run.planning as planning

    style, clip, _ = inputs
    plan = plan_transfer(style, clip, PARAMS, start=1, end=None)
    whole = plan.writer_settings(clip, crf=20, chroma="444")
    trial = plan.writer_settings(clip, crf=20, chroma="444", frames=1)
    assert whole["audio_frames"] == (1, 3) and trial["audio_frames"] == (1, 2)
    assert {k: v for k, v in trial.items() if k != "audio_frames"} == {
        k: v for k, v in whole.items() if k != "audio_frames"
    }
    assert whole["pixel_format"] == "yuv444p" and whole["crf"] == 20
    seen = []

    class Recorder:
        def __init__(self, path, **settings):
            seen.append(settings)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

        def write(self, frame):
            pass

    monkeypatch.setattr(planning, "VideoWriter", Recorder)
    planning.check_encoding(plan, clip, clip.with_suffix(".out.mp4"), crf=20, chroma="444")
    assert seen[-1] == {**trial, "overwrite": True}
