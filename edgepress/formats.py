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
    weight_only: bool = False  # weights quantized after a float export (edgepress.deploy.weight_only)
    block_sizes: tuple[int, ...] = ()  # the `block_size` values it takes (blockwise weights)


PRECISIONS: dict[str, dict[str, Precision]] = {
    "tflite": {p.name: p for p in (
        Precision("fp32", "no optimization", sparse=True),
        Precision("fp16", "float16 weights (dequantized to float32 at load on CPU; GPU delegates run them natively)",
                  sparse=True),
        Precision("dynamic", "dynamic-range quantization: int8 weights, float activations"),
        Precision("int8", "full-integer: int8 weights, activations, input and output", calibrated=True),
        Precision("int16x8", "int16 activations, int8 weights; float input and output", calibrated=True),
        Precision("int8_weight", "int8 weights per channel (LiteRT's quantizer), float compute", weight_only=True),
        # Blockwise int4 runs as a dynamic-range kernel, computed right by XNNPACK only (LiteRT 2.3).
        Precision("int4_weight", "int4 weights per channel, or blockwise with block_size (LiteRT's quantizer)",
                  weight_only=True, block_sizes=(32, 64, 128, 256)),
    )},
    "onnx": {p.name: p for p in (
        Precision("fp32", "tf2onnx conversion (or the .onnx file as given)"),
        Precision("fp16", "float16 weights and compute, float32 input and output (for GPUs)"),
        Precision("int8_dynamic", "int8 weights, activations quantized at run time"),
        Precision("int8_static", "int8 weights and activations as QDQ pairs, calibrated", calibrated=True),
        Precision("int4_weight", "int4 MatMul weights in blocks (MatMulNBits, default block_size 32)",
                  weight_only=True, block_sizes=(16, 32, 64, 128, 256)),
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


def weight_only_precisions(format: str) -> tuple[str, ...]:
    return tuple(p.name for p in PRECISIONS[format].values() if p.weight_only)


def is_calibrated(format: str, precision: str) -> bool:
    """True when an export at `precision` needs calibration samples."""
    known = PRECISIONS.get(format, {}).get(precision)
    return bool(known and known.calibrated)


def artifact_filename(stem: str, format: str, precision: str, batch_size: int | None = None, sparse: bool = False,
                      trial: int | None = None, layout: str | None = None, block_size: int | None = None,
                      float_ops: tuple[str, ...] | list[str] = ()) -> str:
    """The file name of an artifact:
    <stem>_<precision>[_block<n>][_float-<op kinds>][_b<batch>][_sparse][_<layout>][_try<i>].<format>
    (an int8 file with `float_ops` beside the plain int8 one, e.g. in a tune, is another file)."""
    block = f"_block{block_size}" if block_size else ""
    block += f"_float-{'-'.join(float_ops)}" if float_ops else ""
    batch = f"_b{batch_size}" if batch_size else ""
    tried = f"_try{trial}" if trial else ""
    chosen = f"_{layout.lower()}" if layout else ""
    return f"{stem}_{precision}{block}{batch}{'_sparse' if sparse else ''}{chosen}{tried}.{format}"
