"""TFLite export: a Keras model to a .tflite file in one precision.

Precisions, as the TFLite converter names them:
- fp32: no optimization.
- fp16: float16 weights (dequantized to float32 at load on CPU; GPU delegates run them natively).
- dynamic: dynamic-range quantization, int8 weights, float activations; no calibration data.
- int8: full-integer quantization, int8 weights, activations, input and output; calibrated.
- int16x8: int16 activations, int8 weights (more accurate than int8); calibrated, float input/output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.artifact import Artifact, TensorInfo
from edgepress.compat import quiet
from edgepress.deploy.check import calibration_inputs, compare
from edgepress.errors import EdgepressError, first_line

TFLITE_PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8")
CALIBRATED = ("int8", "int16x8")


def export_tflite(
    model,
    path: str | Path | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    check_data: np.ndarray | None = None,
    steps: Sequence[str] = (),
) -> Artifact:
    """Convert `model` to `path` at `precision`; check it against `model` on `check_data`.

    `calibration` (inputs from the recipe's data) is required for int8 and int16x8.
    `path` defaults to <model name>_<precision>.<format> in the working directory.
    Writes the file and its manifest atomically and returns the Artifact.
    """
    from edgepress.compat import tensorflow

    tf = tensorflow()
    if precision not in TFLITE_PRECISIONS:
        raise EdgepressError(f"Unknown TFLite precision '{precision}'. Use one of: {', '.join(TFLITE_PRECISIONS)}.")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    quantization: dict = {}
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision in CALIBRATED:
        samples = calibration_inputs(model, calibration, f"TFLite {precision}")
        converter.representative_dataset = lambda: ([s[None]] for s in samples)
        quantization["calibration_samples"] = len(samples)
    if precision == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if precision == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    try:
        with quiet():
            data = converter.convert()
    except Exception as e:  # the converter raises many types, with MLIR diagnostics
        raise EdgepressError(
            f"The TFLite converter could not make a {precision} model of '{model.name}': {first_line(e)}. "
            "Try another precision, or check that every layer is a TFLite builtin op."
        ) from None

    path = Path(path or f"{model.name}_{precision}.tflite")
    with files.atomic_path(path) as tmp:
        tmp.write_bytes(data)
        check = compare(model, tmp, check_data) if check_data is not None else {}
    inputs, outputs = signature(path)
    artifact = Artifact.describe(
        path, "tflite", precision, inputs=inputs, outputs=outputs, steps=list(steps),
        quantization=quantization, check=check,
    )
    artifact.save_manifest()
    return artifact


def signature(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of a .tflite file, with (scale, zero_point) for quantized tensors."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def info(d) -> TensorInfo:
        scale, zero_point = d["quantization"]
        return TensorInfo(
            name=d["name"],
            shape=[int(s) for s in d["shape_signature"]],
            dtype=np.dtype(d["dtype"]).name,
            quantization=(float(scale), int(zero_point)) if scale else None,
        )

    return [info(d) for d in interpreter.get_input_details()], [info(d) for d in interpreter.get_output_details()]
