"""A PyTorch program to TFLite with litert-torch (Google's PyTorch-to-LiteRT converter); its ONNX route is
torch.onnx (edgepress.models.torch_program.TorchSource.to_onnx).

    artifact = export_tflite(TorchSource(Path("cnn.pt2")), "cnn_int8.tflite", "int8", calibration=x[:200],
                             check_data=x_test[:200], layout="NHWC")   # edgepress.deploy.tflite's export_tflite

Precisions, with the quantizers litert-torch itself uses:
- fp32: `litert_torch.convert`.
- fp16: float16 weights (litert-torch's `full_fp16_recipe`, applied by ai-edge-quantizer).
- dynamic: int8 weights, activations quantized at run time (litert-torch's PT2E quantizer, `is_dynamic=True`).
- int8: int8 weights and activations, int8 input and output like edgepress's Keras int8 exports; activation
  ranges calibrated on the recipe's calibration data (PT2E quantizer: prepare_pt2e, calibrate, convert_pt2e). The
  quantizer is wrapped as qat's is (edgepress.models.torch_attention_quant), so the two matmuls inside
  scaled_dot_product_attention are int8 BATCH_MATMULs too; `float_ops: [attention]` keeps them float (LayerNorm is
  float in litert-torch's int8 anyway).
  A program that went through qat (edgepress.compress.qat_torch) already holds its quantize / dequantize pairs:
  it is converted as it is, with the ranges QAT learned (int8 is its only TFLite precision).
- int16x8: int16 activations, int8 weights: the fp32 file quantized by LiteRT's quantizer (static_wi8_ai16),
  calibrated on the same data through the float file.

litert-torch lowers through JAX and needs every dimension static, so a TFLite file from PyTorch has a fixed
batch (`batch_size`, default 1). Layout: the PyTorch model takes NCHW images; `layout="NHWC"` wraps it with
litert-torch's `to_channel_last_io`, so the .tflite file takes NHWC like a TFLite user expects. The manifest
records the layout, and every check and measurement feeds each file in its own layout.

litert-torch and torch are the extra `edgepress[torch]`. litert-torch 0.10 installs beside TensorFlow 2.21 and
runs in the same process; its converter (litert-converter 0.5, through xdsl 0.28) holds typing-extensions
below 4.13, so pip resolves pydantic 2.11.x for such an environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgepress.compat import quiet
from edgepress.deploy.check import calibration_inputs
from edgepress.deploy.layers import PROGRAM_FLOAT_OPS, check_float_op_kinds
from edgepress.deploy.layout import LAYOUTS, in_layout, layout_change
from edgepress.deploy.registry import Exporter, ExportRequest, register
from edgepress.deploy.static_16x8 import static_16x8
from edgepress.errors import EdgepressError, first_line

TORCH_TFLITE_PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
INSTALL = "pip install 'edgepress[torch]'"


@register
class TorchTflite(Exporter):
    """litert-torch's converter (and its PT2E quantizer) on the program's module, at a fixed batch (default 1)."""

    format: ClassVar[str] = "tflite"
    kinds: ClassVar[frozenset[str]] = frozenset({"torch"})
    precisions: ClassVar[tuple[str, ...]] = TORCH_TFLITE_PRECISIONS

    def check(self, request: ExportRequest) -> None:
        """Refuse, before any work, a TFLite export of a PyTorch model that litert-torch cannot make."""
        source, layout = request.source, request.layout
        check_not_quantize_aware(request)
        if request.float_layers or request.sparse:
            raise EdgepressError(f"float_layers and sparse are options of Keras TFLite exports; {source.path} is a "
                                 "PyTorch model. Remove them from its TFLite exports.")
        if layout is not None and layout not in LAYOUTS:
            raise EdgepressError(f"Unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}.")
        if layout is not None and layout != source.layout and source.layout is None:
            raise EdgepressError(
                f"layout {layout} asks for an image layout, but {source.path} takes input of shape "
                f"{tuple(source.input_shape)}, not (N, C, H, W) images. Remove layout from its exports."
            )
        fixed = source.fixed_batch
        if fixed is not None and request.batch_size not in (None, fixed):
            raise EdgepressError(
                f"batch_size {request.batch_size} on tflite {request.precision}: {source.path} was exported with its "
                f"batch fixed at {fixed}, and runs at that batch only. Remove batch_size, or export the model with a "
                "dynamic batch (torch.export.Dim)."
            )
        if request.precision == "int8" and not source.quantize_aware:
            calibration_inputs(source, request.calibration, "TFLite int8 (litert-torch)")
        ops = {str(node.target) for node in source.program.graph.nodes}
        if request.float_ops:
            check_program_float_ops(request, ops)
        if request.precision == "dynamic" and any(op.startswith("aten.embedding") for op in ops):
            raise EdgepressError(
                f"tflite dynamic of {source.path}: litert-torch's dynamic-range quantizer writes its embedding "
                "(aten.embedding) as an int8 EMBEDDING_LOOKUP with a non-zero zero point, which LiteRT cannot load. "
                "Export it as tflite int8 (calibrated) or int8_weight, or as onnx int8_dynamic."
            )
        if request.precision == "int8" and any(op.startswith("aten.gru") for op in ops):
            raise EdgepressError(
                f"tflite int8 of {source.path}: litert-torch's int8 quantizer (PT2E) cannot convert its GRU "
                "(aten.gru). Export it as tflite dynamic, int8_weight or int16x8, or as onnx int8_dynamic."
            )
        _litert_torch(source)

    def layout(self, request: ExportRequest) -> str | None:
        return request.layout or request.source.layout

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        source, precision = request.source, request.precision
        litert_torch, torch = _litert_torch(source)
        layout = self.layout(request)
        batch = request.batch_size or source.fixed_batch or 1
        module = source.module
        to_artifact = layout_change(source.layout, layout)
        if to_artifact is not None:
            module = litert_torch.to_channel_last_io(module, args=[0])
        sample_shape = in_layout(source.input_shape[1:], to_artifact)
        sample = torch.zeros((batch, *sample_shape), dtype=getattr(torch, source.input_dtype.name))
        quantization: dict = {"converter": f"litert-torch {_version('litert-torch')}", "batch_size": batch}
        samples = None
        if precision == "int8" and not source.quantize_aware:
            samples = calibration_inputs(source, request.calibration, "TFLite int8 (litert-torch)")
            quantization["calibration_samples"] = len(samples)
        try:
            with _silenced():
                if source.quantize_aware:
                    converted, facts = _convert_quantize_aware(litert_torch, module, sample)
                else:
                    converted, facts = _convert(litert_torch, torch, module, sample, precision, samples, to_artifact,
                                                "attention" not in request.float_ops)
        except EdgepressError:
            raise
        except Exception as e:  # litert-torch raises RuntimeError / ValueError / JAX errors with the op in the text
            raise EdgepressError(_conversion_error(source, precision, e)) from None
        quantization.update(facts)
        converted.export(str(out))
        return quantization


@register
class TorchTflite16x8(TorchTflite):
    """int16x8 from a PyTorch program: litert-torch's fp32 file, then LiteRT's quantizer (ai-edge-quantizer) with
    its static int16-activation, int8-weight recipe, calibrated on the recipe's samples through the float file
    (litert-torch's own PT2E quantizer makes int8 only)."""

    precisions: ClassVar[tuple[str, ...]] = ("int16x8",)

    def check(self, request: ExportRequest) -> None:
        check_not_quantize_aware(request)
        calibration_inputs(request.source, request.calibration, "TFLite int16x8 (LiteRT's quantizer)")
        super().check(dataclasses.replace(request, precision="fp32"))

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        samples = calibration_inputs(request.source, request.calibration, "TFLite int16x8 (LiteRT's quantizer)")
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / "fp32.tflite"
            facts = super().write(dataclasses.replace(request, precision="fp32"), fp32)
            facts.update(static_16x8(fp32, out, samples, request.source.layout, self.layout(request)))
        return facts


def check_program_float_ops(request: ExportRequest, ops: set[str]) -> None:
    """Refuse float_ops a PyTorch program's tflite int8 export cannot honour (Keras models: deploy.layers)."""
    source = request.source
    if source.quantize_aware:
        raise EdgepressError(
            f"tflite int8 float_ops of {source.path}: it went through qat, whose int8 ranges (the attention's "
            "included) are in the program, and its file is converted as it is. Remove float_ops from that export, "
            "or leave out the qat step."
        )
    check_float_op_kinds(request.float_ops, f"tflite int8 of {source.path}", "tflite", request.precision)
    for kind in request.float_ops:  # LayerNorm is float in litert-torch's int8 anyway
        if PROGRAM_FLOAT_OPS[kind] not in ops:
            raise EdgepressError(f"tflite int8 float_ops: {source.path} has no {PROGRAM_FLOAT_OPS[kind]}, so "
                                 f"float_ops {kind!r} would keep nothing in float. Remove {kind!r} from float_ops.")


def check_not_quantize_aware(request: ExportRequest) -> None:
    """Refuse a TFLite precision other than int8 for a program that went through qat."""
    if request.source.quantize_aware and request.precision != "int8":
        raise EdgepressError(
            f"tflite {request.precision} of {request.source.path}: it went through qat, and its quantize / dequantize "
            "pairs hold the int8 ranges QAT learned. Export it as tflite int8 (full integer, with those ranges) or as "
            "onnx fp32 / int8_static (QDQ with those ranges); for float files, leave out the qat step."
        )


def _convert_quantize_aware(litert_torch, module, sample):
    """The edge model of a program that went through qat: its quantize / dequantize pairs converted as they are."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    # The converter reads only the quantizer's mode (static int8) from it: the pairs are in the program already.
    static = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    model = litert_torch.convert(module, (sample,), quant_config=QuantConfig(pt2e_quantizer=static))
    return model, {"weights": "int8 per channel", "activations": "int8 (ranges learned by qat)",
                   "quantizer": "litert-torch PT2EQuantizer (quantization-aware training)"}


def _convert(litert_torch, torch, module, sample, precision: str, samples, change, attention: bool = True):
    """The litert-torch edge model at `precision`, and the quantization facts for the manifest; int8 with
    `attention` quantizes the matmuls inside attention too."""
    if precision == "fp32":
        return litert_torch.convert(module, (sample,)), {}
    if precision == "fp16":
        from litert_torch.generative.quantize import quant_recipes

        model = litert_torch.convert(module, (sample,), quant_config=quant_recipes.full_fp16_recipe())
        return model, {"weights": "float16", "quantizer": "litert-torch full_fp16_recipe (ai-edge-quantizer)"}
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgepress.models.torch_attention_quant import with_attention

    dynamic = precision == "dynamic"
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    # int8: the matmuls inside attention too (dynamic quantizes weighted ops only, attention has no weights)
    prepared = prepare_pt2e(torch.export.export(module, (sample,)).module(),
                            with_attention(quantizer) if attention and not dynamic else quantizer)
    with torch.no_grad():
        if dynamic:
            prepared(sample)  # no ranges to learn: one pass traces the observers
        else:
            # One calibration sample per pass, repeated to the fixed batch, in the artifact's layout.
            for x in samples:
                batch = np.repeat(x[None], sample.shape[0], axis=0)
                batch = np.ascontiguousarray(batch.transpose(change) if change else batch)
                prepared(torch.from_numpy(batch).to(sample.dtype))  # token ids come as floats, like all data
    quantized = convert_pt2e(prepared, fold_quantize=False)
    model = litert_torch.convert(quantized, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    facts = {"weights": "int8 per channel", "quantizer": "litert-torch PT2EQuantizer"}
    facts["activations"] = "dynamic int8" if dynamic else "int8 (calibrated)"
    if not attention:
        facts["float_ops"] = ["attention"]
    return model, facts


def _conversion_error(model, precision: str, error: Exception) -> str:
    text = str(error)
    op = re.search(r"\b(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)", text)
    refused = f"it has no lowering for the op {op.group(1)}" if op else first_line(error)
    return (f"litert-torch could not convert {model.path} to TFLite {precision}: {refused}. Replace that op in the "
            "model with ops litert-torch lowers (convolutions, linear layers, pooling, activations, reshapes), or "
            "use its ONNX exports.")


def _litert_torch(model):
    try:
        import litert_torch
        import torch
    except ImportError:
        raise EdgepressError(
            f"TFLite exports of the PyTorch model {model.path} are made by litert-torch, which is not installed: "
            f"{INSTALL} (torch and litert-torch; it installs beside TensorFlow), or ask for ONNX exports only."
        ) from None
    if not os.environ.get("EDGEPRESS_VERBOSE"):
        litert_torch.config.show_progress = False
    return litert_torch, torch


@contextlib.contextmanager
def _silenced():
    """litert-torch and ai-edge-quantizer print progress to stdout, the native parts to stderr."""
    if os.environ.get("EDGEPRESS_VERBOSE"):
        yield
        return
    with quiet(), contextlib.redirect_stdout(io.StringIO()):
        yield


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
