"""ONNX export: a Keras model to a .onnx file with tf2onnx, quantized with onnxruntime.

Precisions:
- fp32: tf2onnx conversion.
- fp16: float16 weights and compute, float32 input/output (for GPUs; CPUs gain nothing).
- int8_dynamic: int8 weights, activations quantized at run time (onnxruntime quantize_dynamic).
- int8_static: int8 weights and activations as QuantizeLinear/DequantizeLinear (QDQ) pairs,
  activation ranges calibrated on the recipe's data (onnxruntime quantize_static).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.artifact import Artifact, TensorInfo
from edgepress.compat import quiet
from edgepress.deploy.check import calibration_inputs, compare
from edgepress.deploy.layers import layer_names, layer_of, nodes_of, output_layers, typical_magnitude
from edgepress.errors import EdgepressError, first_line
from edgepress.formats import artifact_filename, precision_names

ONNX_PRECISIONS = precision_names("onnx")
OPSET = 17


def export_onnx(
    model,
    path: str | Path | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    check_data: np.ndarray | None = None,
    steps: Sequence[str] = (),
    float_layers: Sequence[str] = (),
    calibration_method: str = "minmax",
    per_channel: bool = True,
    quant_format: str = "qdq",
    activation_type: str = "uint8",
    weight_type: str = "int8",
    batch_size: int | None = None,
) -> Artifact:
    """Convert `model` to ONNX at `path` in `precision`; check it against `model` on `check_data`.

    `calibration` (inputs from the recipe's data) is required for int8_static. The other keywords
    shape int8_static only (onnxruntime quantize_static): `float_layers` names Keras layers (or ONNX
    nodes) to leave in float (`nodes_to_exclude`); `calibration_method` is minmax, entropy or
    percentile; `per_channel` quantizes weights per output channel (else per tensor); `quant_format`
    is qdq (QuantizeLinear/DequantizeLinear pairs) or qoperator (QLinearConv, QLinearMatMul...);
    `activation_type` and `weight_type` are uint8 or int8.
    `model` is a Keras model, a plain SavedModel (`edgepress.models.graphs.SavedModelGraph`, converted
    by tf2onnx) or an .onnx model (`OnnxGraph`: its file is the fp32 export, the others start from it).
    `batch_size` fixes the input's batch dimension (default: dynamic; not for an .onnx model).
    `path` defaults to `edgepress.formats.artifact_filename` of the model's name, in the working directory.
    Writes the file and its manifest atomically and returns the Artifact.
    """
    if precision not in ONNX_PRECISIONS:
        raise EdgepressError(f"Unknown ONNX precision '{precision}'. Use one of: {', '.join(ONNX_PRECISIONS)}.")
    static = dict(calibration_method=calibration_method, per_channel=per_channel, quant_format=quant_format,
                  activation_type=activation_type, weight_type=weight_type)
    _check_static_options(precision, float_layers, static)
    samples = calibration_inputs(model, calibration, "ONNX int8_static") if precision == "int8_static" else None
    quantization: dict = {}
    path = Path(path or artifact_filename(model.name, "onnx", precision, batch_size))
    with tempfile.TemporaryDirectory() as work, files.atomic_path(path) as tmp:
        fp32 = Path(work) / "fp32.onnx"
        with quiet():
            _convert(model, fp32, batch_size)
            if precision == "fp32":
                fp32.replace(tmp)
            elif precision == "fp16":
                _to_fp16(fp32, tmp)
            elif precision == "int8_dynamic":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
                quantization = {"weights": "int8", "activations": "dynamic uint8"}
            else:
                quantization = _quantize_static(fp32, tmp, samples, Path(work), model, float_layers, **static)
        check = compare(model, tmp, check_data) if check_data is not None else {}
    inputs, outputs = signature(path)
    return Artifact.record(path, "onnx", precision, inputs=inputs, outputs=outputs, steps=list(steps),
                           quantization=quantization, check=check)


def signature(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of an .onnx file; dynamic dimensions are -1."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def info(value) -> TensorInfo:
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return TensorInfo(name=value.name, shape=shape, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name)

    initializers = {i.name for i in graph.initializer}
    return [info(v) for v in graph.input if v.name not in initializers], [info(v) for v in graph.output]


def _convert(model, out: Path, batch_size: int | None = None) -> None:
    """The fp32 ONNX file of `model` at `out`: tf2onnx for Keras and SavedModels, a copy for an .onnx model."""
    from edgepress.models.source import as_source

    try:
        as_source(model).to_onnx(out, batch_size, OPSET)
    except EdgepressError:
        raise
    except Exception as e:  # tf2onnx raises plain Exceptions for unsupported ops
        raise EdgepressError(
            f"tf2onnx could not convert '{model.name}' to ONNX (opset {OPSET}): {first_line(e)}. "
            "Check that its layers use ops tf2onnx supports."
        ) from None


def _to_fp16(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # keep_io_types: callers keep feeding and reading float32.
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))


def _quantize_static(
    fp32: Path, out: Path, samples: np.ndarray, work: Path, model, float_layers: Sequence[str] = (),
    calibration_method: str = "minmax", per_channel: bool = True, quant_format: str = "qdq",
    activation_type: str = "uint8", weight_type: str = "int8",
) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime recommends shape inference and graph optimization before quantizing.
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # symbolic shapes are for transformers
    # Layer names become node names of the graph being quantized (the optimizer fuses and renames nodes).
    nodes = [n.name for n in onnx.load(str(prepared)).graph.node]
    excluded = nodes_of(float_layers, nodes, model, "ONNX int8_static float_layers") if float_layers else []
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    # The histogram calibrators print their progress to stdout; send it where quiet() sends chatter.
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(
            str(prepared), str(out), _reader(samples, *_input_of(prepared)),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel, activation_type=types[activation_type], weight_type=types[weight_type],
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[calibration_method],
            nodes_to_exclude=excluded,
        )
    quantization = {
        "calibration_samples": len(samples), "method": calibration_method, "format": _FORMATS[quant_format],
        "per_channel": per_channel, "activations": activation_type, "weights": weight_type,
    }
    if float_layers:
        quantization.update(float_layers=list(float_layers), float_nodes=excluded)
    return quantization


_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
_STATIC_CHOICES = {
    "calibration_method": ("minmax", "entropy", "percentile"),
    "per_channel": (True, False),
    "quant_format": tuple(_FORMATS),
    "activation_type": ("uint8", "int8"),
    "weight_type": ("uint8", "int8"),
}
_STATIC_DEFAULTS = {"calibration_method": "minmax", "per_channel": True, "quant_format": "qdq",
                    "activation_type": "uint8", "weight_type": "int8"}


def _check_static_options(precision: str, float_layers: Sequence[str], static: dict) -> None:
    """Refuse int8_static options with unknown values, or given for another precision."""
    for name, value in static.items():
        if value not in _STATIC_CHOICES[name]:
            raise EdgepressError(
                f"Unknown ONNX {name} {value!r}. Use one of: {', '.join(map(str, _STATIC_CHOICES[name]))}."
            )
    changed = [name for name, value in static.items() if value != _STATIC_DEFAULTS[name]]
    changed += ["float_layers"] if float_layers else []
    if changed and precision != "int8_static":
        raise EdgepressError(
            f"{', '.join(changed)}: these shape ONNX static quantization only; "
            f"use precision int8_static, not '{precision}'."
        )


def _input_of(path: Path) -> tuple[str, str, int]:
    """The name, dtype and batch (1 when dynamic) of the (single) input of an .onnx file."""
    (first, *_), _ = signature(path)
    return first.name, first.dtype, max(1, first.shape[0] if first.shape else 1)


def _reader(samples: np.ndarray, input_name: str = "input", dtype: str = "float32", batch: int = 1):
    """An onnxruntime CalibrationDataReader that feeds `samples` one at a time as the input named `input_name`.

    A model with a fixed batch gets each sample repeated to that batch.
    """
    from onnxruntime.quantization import CalibrationDataReader

    samples = samples.astype(dtype, copy=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.repeat(samples[i : i + 1], batch, axis=0) for i in range(len(samples)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def layer_errors(model, float_path: str | Path, qdq_path: str | Path, calibration: np.ndarray) -> list[dict]:
    """The layer-wise int8 error of a QDQ model against its float model, from onnxruntime's QDQ debugging tools.

    Both files run on the calibration samples with every intermediate tensor saved (qdq_loss_debug),
    and each activation the QDQ model quantizes is compared with the same tensor of the float model.
    Returns one dict per quantized activation: `layer` (the Keras layer, or None), `node` (the tensor),
    `error` (the RMS difference in units of a typical activation: rmse / median |nonzero float value|),
    `relative_error` (||float - int8|| / ||float||), `rmse`, `max_abs_error`, all over the samples and
    including the error of the layers before, and `own_error`, the `error` of this tensor's own QDQ pair.
    """
    import math

    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    samples = calibration_inputs(model, calibration, "ONNX layer-wise error analysis")
    activations = {}
    with tempfile.TemporaryDirectory() as work, quiet():
        for kind, path in (("float", float_path), ("qdq", qdq_path)):
            augmented = Path(work) / f"{kind}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            activations[kind] = collect_activations(str(augmented), _reader(samples, *_input_of(Path(path))))
    matched = create_activation_matching(activations["qdq"], activations["float"])

    def flat(arrays) -> np.ndarray:
        return np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)

    def ratio(error: float, reference: float) -> float:
        return error / reference if reference > 0 else (0.0 if error == 0 else math.inf)

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(x))))

    layers, outputs = layer_names(model), output_layers(model)
    errors = []
    for tensor, match in matched.items():
        if "float" not in match:  # a tensor the float model does not have (made by the quantizer)
            continue
        reference, quantized, before = flat(match["float"]), flat(match["post_qdq"]), flat(match["pre_qdq"])
        typical = typical_magnitude(reference)
        errors.append({
            "layer": layer_of(tensor, layers, outputs),
            "node": tensor,
            "error": ratio(rms(reference - quantized), typical),
            "relative_error": ratio(rms(reference - quantized), rms(reference)),
            "rmse": rms(reference - quantized),
            "max_abs_error": float(np.max(np.abs(reference - quantized))),
            "own_error": ratio(rms(before - quantized), typical_magnitude(before)),
        })
    return errors
