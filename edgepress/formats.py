"""The export formats and their precisions, listed once, and the one rule that names an artifact file.

Everything that needs to know a precision (the recipe's checks, the exporters, the device profiles, the
CLI) asks here, so a new precision is added in one place. Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    """One precision of one format, and what an export at it needs or allows."""

    name: str
    description: str
    calibrated: bool = False  # needs calibration samples (activation ranges)
    sparse: bool = False  # its weights may be stored as sparse tensors (tflite `sparse: true`)


PRECISIONS: dict[str, dict[str, Precision]] = {
    "tflite": {p.name: p for p in (
        Precision("fp32", "no optimization", sparse=True),
        Precision("fp16", "float16 weights (dequantized to float32 at load on CPU; GPU delegates run them natively)",
                  sparse=True),
        Precision("dynamic", "dynamic-range quantization: int8 weights, float activations"),
        Precision("int8", "full-integer: int8 weights, activations, input and output", calibrated=True),
        Precision("int16x8", "int16 activations, int8 weights; float input and output", calibrated=True),
    )},
    "onnx": {p.name: p for p in (
        Precision("fp32", "tf2onnx conversion (or the .onnx file as given)"),
        Precision("fp16", "float16 weights and compute, float32 input and output (for GPUs)"),
        Precision("int8_dynamic", "int8 weights, activations quantized at run time"),
        Precision("int8_static", "int8 weights and activations as QDQ pairs, calibrated", calibrated=True),
    )},
}
FORMATS = tuple(PRECISIONS)
TITLES = {"tflite": "TFLite", "onnx": "ONNX"}  # how a format is written in messages
# What accuracy-aware quantization (`exports[].quantize`) makes in each format.
QUANTIZED = {"tflite": "int8", "onnx": "int8_static"}


def precision_names(format: str) -> tuple[str, ...]:
    return tuple(PRECISIONS[format])


def sparse_precisions(format: str = "tflite") -> tuple[str, ...]:
    return tuple(p.name for p in PRECISIONS[format].values() if p.sparse)


def is_calibrated(format: str, precision: str) -> bool:
    """True when an export at `precision` needs calibration samples."""
    known = PRECISIONS.get(format, {}).get(precision)
    return bool(known and known.calibrated)


def artifact_filename(stem: str, format: str, precision: str, batch_size: int | None = None, sparse: bool = False,
                      trial: int | None = None) -> str:
    """The file name of an artifact: <stem>_<precision>[_b<batch>][_sparse][_try<i>].<format>."""
    batch = f"_b{batch_size}" if batch_size else ""
    tried = f"_try{trial}" if trial else ""
    return f"{stem}_{precision}{batch}{'_sparse' if sparse else ''}{tried}.{format}"
