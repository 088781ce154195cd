"""Reading PyTorch checkpoints without PyTorch, admitting only tensor data.

A PyTorch checkpoint is a pickle, and unpickling runs whatever callables the
file names. This module never uses a general unpickler on a checkpoint: its
unpickler resolves only the few globals needed to rebuild tensors
(``torch._utils._rebuild_tensor_v2``, ``torch._utils._rebuild_parameter``,
``collections.OrderedDict`` and the storage types) and refuses every other
name with a :class:`~diva_numba.errors.ModelError`. Tensors come back as NumPy
arrays, with their sizes, strides and storage offsets respected.

Two layouts are read:

* the legacy serialisation (PyTorch < 1.6 and ``_use_new_zipfile_serialization=False``):
  five consecutive pickles/blocks: a magic number, the protocol version (1001),
  a dict of system information, the main pickle (storages appear as persistent
  ids), the list of storage keys, then each storage's raw bytes preceded by its
  element count as a little-endian int64;
* the zip layout (PyTorch >= 1.6): ``<prefix>/data.pkl`` with persistent ids
  naming the members ``<prefix>/data/<key>`` that hold the raw storages.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from diva_numba.errors import ModelError

#: First pickle of a legacy checkpoint.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
#: Second pickle of a legacy checkpoint.
LEGACY_PROTOCOL_VERSION = 1001

#: NumPy dtype of each PyTorch storage type (all little-endian on disk).
#: bfloat16 has no NumPy dtype: it is read as raw 16-bit words and widened to float32.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "UntypedStorage": np.dtype("u1"),
}

_STORAGE_MODULES = frozenset({"torch", "torch.cuda", "torch.storage"})


@dataclass(frozen=True)
class _StorageType:
    """What the unpickler hands back for a global such as ``torch.FloatStorage``."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass(eq=False)
class _Storage:
    """A flat storage whose bytes may arrive after the pickle that refers to it."""

    key: str
    storage_type: _StorageType
    numel: int
    data: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self.data is None:
            raise ModelError(f"storage {self.key!r} is referenced but its data is missing")
        if self.storage_type.name == "BFloat16Storage":
            # bfloat16 is the upper half of a float32.
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        return self.data


@dataclass(eq=False)
class _StorageView:
    """A slice of another storage (legacy files written before storage views were removed)."""

    root: _Storage
    offset: int
    numel: int

    def array(self) -> np.ndarray:
        return self.root.array()[self.offset : self.offset + self.numel]


@dataclass(eq=False)
class _TensorRef:
    """A tensor rebuilt lazily, once every storage has been read."""

    storage: _Storage | _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    where: str = field(default="")

    def materialise(self) -> np.ndarray:
        flat = self.storage.array()
        size, stride, offset = self.size, self.stride, self.offset
        if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
            raise ModelError(f"malformed tensor: size {size}, stride {stride}, offset {offset}")
        if 0 in size:
            return np.zeros(size, dtype=flat.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= flat.size:
            raise ModelError(
                f"malformed tensor: size {size}, stride {stride}, offset {offset} "
                f"reach past its storage of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[offset:],
            shape=size,
            strides=tuple(s * flat.itemsize for s in stride),
            writeable=False,
        )
        return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, *unused):
    if not isinstance(storage, _Storage | _StorageView):
        raise ModelError("malformed checkpoint: a tensor is built from something not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    # A Parameter is a tensor with autograd flags we have no use for.
    return data


_ADMITTED_CALLABLES: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only tensor-rebuilding globals and storage ids."""

    def __init__(self, file: BinaryIO, *, origin: str, storage_loader=None):
        super().__init__(file, encoding="utf-8")
        self._origin = origin
        self._storage_loader = storage_loader

    def find_class(self, module: str, name: str):
        # Header pickles (no storage loader) hold plain data: no global at all.
        if self._storage_loader is not None:
            admitted = _ADMITTED_CALLABLES.get((module, name))
            if admitted is not None:
                return admitted
            if module in _STORAGE_MODULES and name in STORAGE_DTYPES:
                return _StorageType(name)
        raise ModelError(
            f"{self._origin}: the checkpoint reader refuses to load global '{module}.{name}' "
            "(only tensors, storages and dicts are admitted; the file is not a plain "
            "weights file and may be unsafe)"
        )

    def persistent_load(self, pid):
        if self._storage_loader is None:
            raise ModelError(f"{self._origin}: unexpected persistent id in a checkpoint header")
        if not isinstance(pid, tuple) or not pid:
            raise ModelError(f"{self._origin}: malformed persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise ModelError(
                f"{self._origin}: the checkpoint reader refuses persistent object {kind!r} "
                "(only storages are admitted)"
            )
        storage_type = pid[1] if len(pid) > 1 else None
        if not isinstance(storage_type, _StorageType):
            raise ModelError(f"{self._origin}: persistent id names no storage type: {pid!r}")
        return self._storage_loader(storage_type, pid[2:])


def _load_plain(file: BinaryIO, origin: str):
    """One header pickle, in which no global at all is admitted."""
    return _RestrictedUnpickler(file, origin=origin).load()


def _as_key(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _remaining_bytes(file: BinaryIO) -> int | None:
    try:
        here = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(here)
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return end - here


def _load_legacy(file: BinaryIO, origin: str):
    if _load_plain(file, origin) != LEGACY_MAGIC_NUMBER:
        raise ModelError(f"{origin}: not a PyTorch checkpoint (wrong magic number)")
    protocol = _load_plain(file, origin)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ModelError(f"{origin}: unsupported PyTorch serialisation protocol {protocol!r}")
    sys_info = _load_plain(file, origin)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ModelError(f"{origin}: big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}
    views: dict[str, _StorageView] = {}

    def load_storage(storage_type: _StorageType, rest: tuple):
        if len(rest) != 4:
            raise ModelError(f"{origin}: malformed storage id {rest!r}")
        root_key, _location, numel, view_metadata = rest
        root_key = _as_key(root_key)
        root = storages.get(root_key)
        if root is None:
            root = storages[root_key] = _Storage(root_key, storage_type, int(numel))
        elif root.storage_type != storage_type:
            raise ModelError(f"{origin}: storage {root_key!r} is used with two element types")
        if view_metadata is None:
            return root
        view_key, offset, view_numel = view_metadata
        view_key = _as_key(view_key)
        if view_key not in views:
            views[view_key] = _StorageView(root, int(offset), int(view_numel))
        return views[view_key]

    result = _RestrictedUnpickler(file, origin=origin, storage_loader=load_storage).load()
    keys = _load_plain(file, origin)
    if not isinstance(keys, list):
        raise ModelError(f"{origin}: malformed storage key list")
    for key in keys:
        storage = storages.get(_as_key(key))
        if storage is None:
            raise ModelError(f"{origin}: data for storage {key!r}, which nothing refers to")
        header = file.read(8)
        if len(header) != 8:
            raise ModelError(f"{origin}: file is truncated (storage {key!r} missing)")
        (count,) = struct.unpack("<q", header)
        if count != storage.numel:
            raise ModelError(
                f"{origin}: storage {key!r} holds {count} elements, its tensors expect "
                f"{storage.numel}"
            )
        dtype = storage.storage_type.dtype
        storage.data = _read_exactly(file, count * dtype.itemsize, origin).view(dtype)
    return result


def _read_exactly(file: BinaryIO, nbytes: int, origin: str) -> np.ndarray:
    remaining = _remaining_bytes(file)
    if nbytes < 0 or (remaining is not None and nbytes > remaining):
        raise ModelError(f"{origin}: file is truncated (a storage needs {nbytes} more bytes)")
    data = file.read(nbytes)
    if len(data) != nbytes:
        raise ModelError(f"{origin}: file is truncated (a storage needs {nbytes} more bytes)")
    return np.frombuffer(bytearray(data), dtype=np.uint8)


def _load_zip(archive: zipfile.ZipFile, origin: str):
    pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ModelError(f"{origin}: a zip file but not a PyTorch checkpoint (no single data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "byteorder" in archive.namelist():
        if archive.read(prefix + "byteorder").strip() != b"little":
            raise ModelError(f"{origin}: big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}

    def load_storage(storage_type: _StorageType, rest: tuple):
        if len(rest) != 3:
            raise ModelError(f"{origin}: malformed storage id {rest!r}")
        key, _location, numel = _as_key(rest[0]), rest[1], int(rest[2])
        storage = storages.get(key)
        if storage is not None:
            return storage
        member = f"{prefix}data/{key}"
        nbytes = numel * storage_type.dtype.itemsize
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise ModelError(f"{origin}: storage {member!r} is missing") from None
        if info.file_size != nbytes:
            raise ModelError(
                f"{origin}: storage {member!r} has {info.file_size} bytes, expected {nbytes}"
            )
        raw = np.frombuffer(bytearray(archive.read(member)), dtype=np.uint8)
        storage = storages[key] = _Storage(key, storage_type, numel, raw.view(storage_type.dtype))
        return storage

    with archive.open(pickles[0]) as pickled:
        return _RestrictedUnpickler(pickled, origin=origin, storage_loader=load_storage).load()


def _materialise(obj):
    """Replace every lazy tensor inside dicts, lists and tuples by its NumPy array."""
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, dict):
        for key in obj:
            obj[key] = _materialise(obj[key])
        return obj
    if isinstance(obj, list):
        obj[:] = [_materialise(item) for item in obj]
        return obj
    if isinstance(obj, tuple):
        return tuple(_materialise(item) for item in obj)
    return obj


def load_checkpoint(source: str | os.PathLike | bytes, *, origin: str | None = None) -> Any:
    """Read a PyTorch checkpoint (legacy or zip layout) without PyTorch.

    Parameters
    ----------
    source : path-like or bytes
        The checkpoint file, or its whole content.
    origin : str, optional
        How to name the file in error messages (default: the path).

    Returns
    -------
    object
        The unpickled object (usually a dict of name -> tensor) with every
        tensor replaced by a C-contiguous NumPy array of the tensor's dtype
        and shape (bfloat16 tensors come back as float32).

    Raises
    ------
    ModelError
        If the file is missing, truncated, malformed, or names any global
        other than the tensor-rebuilding ones.
    """
    if isinstance(source, bytes | bytearray):
        origin = origin or "checkpoint"
        opener = functools.partial(io.BytesIO, bytes(source))
    else:
        origin = origin or str(source)
        opener = functools.partial(open, source, "rb")
    try:
        # Read from the file itself: a full-size checkpoint need not fit in memory twice.
        with opener() as file:
            signature = file.read(4)
            file.seek(0)
            if signature == b"PK\x03\x04":
                with zipfile.ZipFile(file) as archive:
                    result = _load_zip(archive, origin)
            elif signature[:1] == b"\x80":
                result = _load_legacy(file, origin)
            else:
                raise ModelError(f"{origin}: not a PyTorch checkpoint (neither zip nor pickle)")
        return _materialise(result)
    except OSError as exc:
        raise ModelError(f"cannot read {origin}: {exc.strerror or exc}") from None
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{origin}: corrupt or truncated checkpoint ({exc})") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error) as exc:
        raise ModelError(
            f"{origin}: malformed checkpoint ({exc.__class__.__name__}: {exc})"
        ) from None
