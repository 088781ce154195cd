"""The VGG-19 layer structure shared by the model export, features and deconvolution.

The ONNX feature model that diva-numba writes and reads follows this contract:

* input ``image``: float32 ``(1, 3, H, W)``, RGB, values 0..255, dynamic H and W;
* preprocessing inside the graph: channels reordered by the int64 initializer
  ``preprocess_channel_order`` (``[2, 1, 0]`` for Caffe-lineage BGR weights,
  ``[0, 1, 2]`` for torchvision), then ``(x - preprocess_mean) * preprocess_scale``
  with both initializers shaped ``(1, 3, 1, 1)`` in the network's channel order;
  the result is the graph value ``preprocessed`` ("level 0" of the analogy);
* for every conv in :data:`CONV_LAYERS`: initializers ``{name}_weight``
  ``(out, in, 3, 3)`` and ``{name}_bias`` ``(out,)``, a 3x3 Conv with padding 1,
  then Relu; a 2x2 stride-2 MaxPool with ``ceil_mode=1`` after each conv listed in
  :data:`POOL_AFTER`;
* outputs ``relu1_1`` .. ``relu5_1`` (:data:`FEATURE_LAYERS`);
* metadata property ``diva_numba_format`` = :data:`ONNX_FORMAT` and ``source``.
"""

from __future__ import annotations

ONNX_FORMAT = "1"

#: Convolutions up to conv5_1, in network order.
CONV_LAYERS: tuple[str, ...] = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3", "conv3_4",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4",
    "conv5_1",
)  # fmt: skip

#: Channels out of each conv.
CONV_CHANNELS: dict[str, int] = {
    name: {"1": 64, "2": 128, "3": 256, "4": 512, "5": 512}[name[4]] for name in CONV_LAYERS
}

#: Convs followed by a 2x2 max-pool (ceil rounding).
POOL_AFTER: frozenset[str] = frozenset({"conv1_2", "conv2_2", "conv3_4", "conv4_4"})

#: Feature levels of the analogy, finest first: level L is FEATURE_LAYERS[L - 1].
FEATURE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

#: Caffe's ImageNet mean in BGR order, on 0..255 values.
CAFFE_BGR_MEAN: tuple[float, float, float] = (103.939, 116.779, 123.68)


def conv_of_level(level: int) -> str:
    """Name of the conv whose ReLU output is feature level ``level`` (1..5)."""
    return f"conv{level}_1"


def layers_between(start_level: int, end_level: int) -> tuple[str, ...]:
    """Convs that take feature level ``start_level`` to ``end_level``.

    Level 0 is the preprocessed image. The result lists conv names in order;
    a pool follows each that is in :data:`POOL_AFTER`. For example
    ``layers_between(3, 5)`` is conv3_2 .. conv5_1 (8 convs, 2 pools).
    """
    if not 0 <= start_level < end_level <= 5:
        raise ValueError(f"need 0 <= start < end <= 5, got {start_level}, {end_level}")
    first = 0 if start_level == 0 else CONV_LAYERS.index(conv_of_level(start_level)) + 1
    last = CONV_LAYERS.index(conv_of_level(end_level))
    return CONV_LAYERS[first : last + 1]


def pooled_size(size: int) -> int:
    """Size after a 2x2 stride-2 max-pool with ceil rounding."""
    return (size + 1) // 2


def level_shape(height: int, width: int, level: int) -> tuple[int, int]:
    """Spatial (H, W) of feature level ``level`` for an image of ``height x width``."""
    for _ in range(max(level - 1, 0)):
        height, width = pooled_size(height), pooled_size(width)
    return height, width
