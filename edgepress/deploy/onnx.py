"""ONNX export: a Keras model to a .onnx file with tf2onnx, quantized with onnxruntime.

Precisions:
- fp32: tf2onnx conversion.
- fp16: float16 weights and compute, float32 input/output (for GPUs; CPUs gain nothing).
- int8_dynamic: int8 weights, activations quantized at run time (onnxruntime quantize_dynamic).
- int8_static: int8 weights and activations as QuantizeLinear/DequantizeLinear (QDQ) pairs,
  activation ranges calibrated on the recipe's data (onnxruntime quantize_static).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.artifact import Artifact, TensorInfo
from edgepress.compat import quiet
from edgepress.deploy.check import calibration_inputs, compare
from edgepress.errors import EdgepressError, first_line

ONNX_PRECISIONS = ("fp32", "fp16", "int8_dynamic", "int8_static")
OPSET = 17


def export_onnx(
    model,
    path: str | Path | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    check_data: np.ndarray | None = None,
    steps: Sequence[str] = (),
) -> Artifact:
    """Convert `model` to ONNX at `path` in `precision`; check it against `model` on `check_data`.

    `calibration` (inputs from the recipe's data) is required for int8_static.
    `path` defaults to <model name>_<precision>.<format> in the working directory.
    Writes the file and its manifest atomically and returns the Artifact.
    """
    if precision not in ONNX_PRECISIONS:
        raise EdgepressError(f"Unknown ONNX precision '{precision}'. Use one of: {', '.join(ONNX_PRECISIONS)}.")
    samples = calibration_inputs(model, calibration, "ONNX int8_static") if precision == "int8_static" else None
    quantization: dict = {}
    path = Path(path or f"{model.name}_{precision}.onnx")
    with tempfile.TemporaryDirectory() as work, files.atomic_path(path) as tmp:
        fp32 = Path(work) / "fp32.onnx"
        with quiet():
            _convert(model, fp32)
            if precision == "fp32":
                fp32.replace(tmp)
            elif precision == "fp16":
                _to_fp16(fp32, tmp)
            elif precision == "int8_dynamic":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
                quantization = {"weights": "int8", "activations": "dynamic uint8"}
            else:
                quantization = _quantize_static(fp32, tmp, samples, Path(work))
        check = compare(model, tmp, check_data) if check_data is not None else {}
    inputs, outputs = signature(path)
    artifact = Artifact.describe(
        path, "onnx", precision, inputs=inputs, outputs=outputs, steps=list(steps),
        quantization=quantization, check=check,
    )
    artifact.save_manifest()
    return artifact


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


def _convert(model, out: Path) -> None:
    import tf2onnx

    from edgepress.compat import tensorflow

    tf = tensorflow()
    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input"),)
    try:
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET, output_path=str(out))
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


def _quantize_static(fp32: Path, out: Path, samples: np.ndarray, work: Path) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(samples[i : i + 1] for i in range(len(samples)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    # onnxruntime recommends shape inference and graph optimization before quantizing.
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # symbolic shapes are for transformers
    quantize_static(
        str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    return {
        "calibration_samples": len(samples), "method": "minmax", "format": "QDQ", "per_channel": True,
        "activations": "uint8", "weights": "int8",
    }
