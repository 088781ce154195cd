"""The README's Python API example runs as written and makes what it says."""

import re
from pathlib import Path

import numpy as np
import pytest

from diva_numba.images import load_image
from diva_numba.video import probe_video

ROOT = Path(__file__).resolve().parents[1]


def api_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold one example"
    return blocks[0]


@pytest.mark.model
@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "tools").symlink_to(ROOT / "tools")
    monkeypatch.chdir(tmp_path)
    exec(compile(api_example(), "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out
    reported = [line.split(":")[0] for line in printed.splitlines() if line.startswith("frame ")]
    assert reported == ["frame 0", "frame 1", "frame 2", "frame 3"]
    video = probe_video(tmp_path / "api-example.mp4")
    # The analogy works at 128 px; the video comes back at the clip's own size.
    assert video.frame_count == 4 and (video.width, video.height) == (320, 180)
    assert f"api-example.mp4 4 {video.width}x{video.height}" in printed
    assert not (tmp_path / "api-example.mp4.work").exists()
    assert "warping error " in printed
    # A (frame 40 of the clip) and B' (the painting of frame 24) differ, and so do A and A'.
    a = load_image(tmp_path / "api-frame-40.png")
    a_prime = load_image(tmp_path / "api-analogy" / "A_prime.png")
    style = load_image(ROOT / "tools" / "example" / "style.png")
    assert a_prime.shape == a.shape == (180, 320, 3)
    assert f"api-analogy/A_prime.png {a_prime.shape}" in printed
    assert np.abs(a.astype(int) - style).mean() > 10
    assert np.abs(a_prime.astype(int) - a).mean() > 5
