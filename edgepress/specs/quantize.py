"""Accuracy-aware quantization options (`exports[].quantize`, `edgepress quantize`): pure schema, no heavy imports.

The search that uses them is `edgepress.quantize` (accuracy_aware).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator

from edgepress.errors import EdgepressError
from edgepress.formats import QUANTIZED
from edgepress.specs.section import Section
from edgepress.values import fraction

# ONNX static quantization settings per target, after optimum's AutoQuantizationConfig (static, QDQ).
# uint8 activations everywhere; int8 weights, except AVX2 without VNNI, where u8 x s8 products can
# saturate (VPMADDUBSW), so weights are uint8 too.
PRESETS: dict[str, dict] = {
    "default": {"calibration_method": "minmax", "per_channel": True, "quant_format": "qdq",
                "activation_type": "uint8", "weight_type": "int8"},
    "x86-avx2": {"calibration_method": "minmax", "per_channel": True, "quant_format": "qdq",
                 "activation_type": "uint8", "weight_type": "uint8"},
    "x86-avx512-vnni": {"calibration_method": "minmax", "per_channel": True, "quant_format": "qdq",
                        "activation_type": "uint8", "weight_type": "int8"},
    "arm64": {"calibration_method": "minmax", "per_channel": True, "quant_format": "qdq",
              "activation_type": "uint8", "weight_type": "int8"},
}


class CalibrationConfig(Section):
    """How activation ranges are calibrated. Only `samples` applies to TFLite (its converter calibrates min-max)."""

    model_config = ConfigDict(extra="forbid")

    samples: int | None = Field(None, ge=1, description="Calibration samples; default: all the data gives.")
    preset: Literal["default", "x86-avx2", "x86-avx512-vnni", "arm64"] = Field(
        "default", description="ONNX: the target's settings (method, per-channel, format, types); fields set here win."
    )
    method: Literal["minmax", "entropy", "percentile"] | None = Field(
        None, description="ONNX: how activation ranges are chosen from the calibration data."
    )
    per_channel: bool | None = Field(None, description="ONNX: weights quantized per output channel (else per tensor).")
    format: Literal["qdq", "qoperator"] | None = Field(
        None, description="ONNX: QuantizeLinear/DequantizeLinear pairs (qdq) or quantized operators (qoperator)."
    )

    def onnx_options(self) -> dict:
        """The export_onnx keywords: the preset, with the fields set here replacing its values."""
        options = dict(PRESETS[self.preset])
        for key, option in (("method", "calibration_method"), ("per_channel", "per_channel"),
                            ("format", "quant_format")):
            if getattr(self, key) is not None:
                options[option] = getattr(self, key)
        return options


class QuantizeConfig(Section):
    """Quantize to int8 within an accuracy budget, keeping the most sensitive layers in float if needed."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["int8"] = Field("int8", description="int8: TFLite int8 or ONNX int8_static.")
    max_accuracy_drop: float = Field(
        description="Largest accuracy drop allowed from the Keras float model being exported, as a fraction (0.005) "
        "or a percentage ('0.5%')."
    )
    search: Literal["linear", "bisect"] = Field(
        "linear", description="linear: keep 1, 2, 3... most sensitive layers in float; bisect: halve the range."
    )
    max_float_layers: int | None = Field(
        None, ge=1, description="At most this many layers in float; default: all but one quantized layer."
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    equalize: bool = Field(
        True, description="Before keeping layers in float, try the model cross-layer equalized (the equalize step, "
        "without bias correction), fully quantized."
    )
    bias_correction: bool = Field(
        True, description="Before keeping layers in float, try the model with each Conv / Dense bias corrected for the "
        "mean output error of its int8 weights on the calibration data (per output channel, as the exporters "
        "quantize), fully quantized; kept only when that file is more accurate."
    )
    min_int8_macs: float = Field(
        0.5, description="The share of the model's MACs (multiply-accumulates) the chosen artifact must run in integer "
        "kernels to count as int8, as a fraction or a percentage; below it the run fails its gates (0: allow any)."
    )

    @field_validator("max_accuracy_drop", "min_int8_macs", mode="before")
    @classmethod
    def _percent(cls, value):
        return fraction(value)

    def check_format(self, format: str) -> None:
        """Raise ValueError when an option does not apply to `format`."""
        if format not in QUANTIZED:
            raise ValueError(f"accuracy-aware quantization exports tflite or onnx, not '{format}'")
        c = self.calibration
        onnx_only = [f"calibration.{n}" for n in ("method", "per_channel", "format") if getattr(c, n) is not None]
        onnx_only += ["calibration.preset"] if c.preset != "default" else []
        if format == "tflite" and onnx_only:
            raise ValueError(
                f"{', '.join(onnx_only)}: these apply to ONNX static quantization only; the TFLite converter "
                "calibrates min-max with per-channel weights (for tflite, set only calibration.samples)"
            )


def parse_config(config: QuantizeConfig | dict | None = None, **options) -> QuantizeConfig:
    """A validated QuantizeConfig from a config, a dict, or keywords; bad values raise EdgepressError."""
    if isinstance(config, QuantizeConfig):
        return config
    try:
        return QuantizeConfig.model_validate({**(config or {}), **options})
    except ValidationError as e:
        problems = []
        for error in e.errors():
            where = ".".join(str(p) for p in error["loc"]) or "options"
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        raise EdgepressError("Accuracy-aware quantization options are invalid: " + "; ".join(problems) + ".") from None
