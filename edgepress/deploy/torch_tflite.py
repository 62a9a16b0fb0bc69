"""A PyTorch program to TFLite with litert-torch (Google's PyTorch-to-LiteRT converter), and to ONNX with torch.onnx.

    artifact = export_torch_tflite(TorchGraph("cnn.pt2"), "cnn_int8.tflite", "int8", calibration=x[:200],
                                   check_data=x_test[:200], layout="NHWC")

Precisions, with the quantizers litert-torch itself uses:
- fp32: `litert_torch.convert`.
- fp16: float16 weights (litert-torch's `full_fp16_recipe`, applied by ai-edge-quantizer).
- dynamic: int8 weights, activations quantized at run time (litert-torch's PT2E quantizer, `is_dynamic=True`).
- int8: int8 weights and activations, int8 input and output like edgepress's Keras int8 exports; activation
  ranges calibrated on the recipe's calibration data (PT2E quantizer: prepare_pt2e, calibrate, convert_pt2e).

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
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.artifact import Artifact
from edgepress.compat import quiet
from edgepress.deploy.check import calibration_inputs, compare
from edgepress.errors import EdgepressError, first_line

TORCH_TFLITE_PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
LAYOUTS = ("NCHW", "NHWC")
INSTALL = "pip install 'edgepress[torch]'"


def export_torch_tflite(
    model,
    path: str | Path | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    check_data: np.ndarray | None = None,
    steps: Sequence[str] = (),
    batch_size: int | None = None,
    layout: str | None = None,
) -> Artifact:
    """Convert a PyTorch program (`edgepress.models.graphs.TorchGraph`) to a .tflite file with litert-torch.

    `calibration` (inputs in the model's own layout, NCHW for images) is required for int8. `batch_size`
    fixes the batch (default 1: litert-torch converts static shapes only). `layout` is the artifact's input
    layout: the model's own (default) or "NHWC" for an NCHW image model. The file is checked against the
    PyTorch model's outputs on `check_data`. Writes the file and its manifest atomically; returns the Artifact.
    """
    litert_torch, torch = _litert_torch(model)
    check_tflite_options(model, precision, layout)
    layout = layout or model.layout
    batch = batch_size or 1
    module = model.module
    to_artifact = _layout_change(model.layout, layout)
    if to_artifact is not None:
        module = litert_torch.to_channel_last_io(module, args=[0])
    sample_shape = _in_layout(model.input_shape[1:], to_artifact)
    sample = torch.zeros((batch, *sample_shape), dtype=getattr(torch, model.input_dtype.name))
    quantization: dict = {"converter": f"litert-torch {_version('litert-torch')}", "batch_size": batch}
    samples = None
    if precision == "int8":
        samples = calibration_inputs(model, calibration, "TFLite int8 (litert-torch)")
        quantization["calibration_samples"] = len(samples)
    try:
        with _silenced():
            converted, facts = _convert(litert_torch, torch, module, sample, precision, samples, to_artifact)
    except EdgepressError:
        raise
    except Exception as e:  # litert-torch raises RuntimeError / ValueError / JAX errors with the op in the text
        raise EdgepressError(_conversion_error(model, precision, e)) from None
    quantization.update(facts)

    path = Path(path or f"{model.name}_{precision}{f'_b{batch_size}' if batch_size else ''}.tflite")
    with files.atomic_path(path) as tmp:
        converted.export(str(tmp))
        check = {}
        if check_data is not None:
            check = compare(model, tmp, check_data, artifact_x=to_layout(check_data, model.layout, layout))
    from edgepress.deploy.tflite import signature

    inputs, outputs = signature(path)
    return Artifact.record(path, "tflite", precision, inputs=inputs, outputs=outputs, steps=list(steps),
                           quantization=quantization, check=check, layout=layout)


def check_tflite_options(model, precision: str, layout: str | None) -> None:
    """Refuse, before any work, a TFLite export of a PyTorch model that litert-torch cannot make."""
    if precision not in TORCH_TFLITE_PRECISIONS:
        raise EdgepressError(
            f"TFLite {precision} from the PyTorch model {model.path} is not available: litert-torch's quantizers "
            f"make {', '.join(TORCH_TFLITE_PRECISIONS)}. Ask for one of those."
        )
    if layout is not None and layout not in LAYOUTS:
        raise EdgepressError(f"Unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}.")
    if layout is not None and layout != model.layout and model.layout is None:
        raise EdgepressError(
            f"layout {layout} asks for an image layout, but {model.path} takes input of shape "
            f"{tuple(model.input_shape)}, not (N, C, H, W) images. Remove layout from its exports."
        )


def check_torch_exports(model, exports) -> None:
    """Every check `plan` makes for a PyTorch model's exports: litert-torch present, precisions and layouts."""
    tflite = [e for e in exports if e.format == "tflite"]
    for export in exports:
        if getattr(export, "layout", None) is not None and export.format != "tflite":
            raise EdgepressError(f"layout is a TFLite option; {export.format} {export.precision} keeps the "
                                 "PyTorch model's NCHW input. Remove layout from that export.")
    for export in tflite:
        if export.sparse:
            raise EdgepressError(f"sparse TFLite exports come from Keras models; {model.path} is a PyTorch "
                                 "model. Remove sparse from its TFLite exports.")
        check_tflite_options(model, export.precision, getattr(export, "layout", None))
    if tflite:
        _litert_torch(model)


def to_layout(x: np.ndarray, source: str | None, target: str | None) -> np.ndarray:
    """Images `x` in the `source` layout, moved to the `target` layout (NCHW <-> NHWC); others as they are."""
    change = _layout_change(source, target)
    if change is None or x.ndim != 4:
        return x
    return np.ascontiguousarray(x.transpose(change))


def _layout_change(source: str | None, target: str | None) -> tuple[int, ...] | None:
    if source is None or target is None or source == target:
        return None
    return (0, 2, 3, 1) if (source, target) == ("NCHW", "NHWC") else (0, 3, 1, 2)


def _in_layout(sample_shape: Sequence[int | None], change: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = (1, *sample_shape)
    if change is not None:
        shape = tuple(shape[i] for i in change)
    return tuple(int(d) for d in shape[1:])


def _convert(litert_torch, torch, module, sample, precision: str, samples, change):
    """The litert-torch edge model at `precision`, and the quantization facts for the manifest."""
    if precision == "fp32":
        return litert_torch.convert(module, (sample,)), {}
    if precision == "fp16":
        from litert_torch.generative.quantize import quant_recipes

        model = litert_torch.convert(module, (sample,), quant_config=quant_recipes.full_fp16_recipe())
        return model, {"weights": "float16", "quantizer": "litert-torch full_fp16_recipe (ai-edge-quantizer)"}
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    dynamic = precision == "dynamic"
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    prepared = prepare_pt2e(torch.export.export(module, (sample,)).module(), quantizer)
    with torch.no_grad():
        if dynamic:
            prepared(sample)  # no ranges to learn: one pass traces the observers
        else:
            # One calibration sample per pass, repeated to the fixed batch, in the artifact's layout.
            for x in samples:
                batch = np.repeat(x[None], sample.shape[0], axis=0)
                prepared(torch.from_numpy(np.ascontiguousarray(batch.transpose(change) if change else batch)))
    quantized = convert_pt2e(prepared, fold_quantize=False)
    model = litert_torch.convert(quantized, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    facts = {"weights": "int8 per channel", "quantizer": "litert-torch PT2EQuantizer"}
    facts["activations"] = "dynamic int8" if dynamic else "int8 (calibrated)"
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
