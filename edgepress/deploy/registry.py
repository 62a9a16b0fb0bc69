"""The exporters: one request type, one registry, one way every file is written, checked and recorded.

    request = ExportRequest(source, Path("runs/x/artifacts/m_int8.tflite"), "tflite", "int8", calibration=x[:200])
    exporter_for(request).check(request)   # the plan's refusals, before any work
    artifact = export(request)             # the file, checked against its model, and its manifest

An exporter is a class that says which format it writes, from which models (`takes`: by their kind, one of
edgepress.models' keras3, tf_keras, saved_model, onnx, torch, or by what they can do) and at which precisions, and
has two methods: `check` (refuse a request, naming what is at fault and what to do) and `write` (make the file;
return the facts its manifest keeps under `quantization`). It registers itself with `@register`; `export` does the
rest the same way for every exporter: write atomically, compare the file with its model on the check data (top-1
agreement, max abs difference), read its signature and its int8 coverage (edgepress.deploy.coverage), write its
manifest. A new route (a format, a kind, a precision family) is one module with one class.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgepress import files
from edgepress.artifact import Artifact
from edgepress.errors import EdgepressError
from edgepress.formats import PRECISIONS, TITLES
from edgepress.models.source import Source


@dataclass(frozen=True)
class ExportRequest:
    """One export: the model, the file and every option that shapes it."""

    source: Source
    path: Path  # the file to write (edgepress.formats.artifact_filename names the run's)
    format: str  # tflite or onnx
    precision: str = "fp32"
    calibration: np.ndarray | None = None  # inputs for a calibrated precision (int8, int16x8, int8_static)
    check_data: np.ndarray | None = None  # inputs the file is checked on against its model
    steps: tuple[str, ...] = ()  # the compression steps that made the model, for the manifest
    batch_size: int | None = None  # a fixed batch (default: dynamic where the route allows it)
    sparse: bool = False  # tflite fp32 / fp16: mostly-zero weights stored as sparse tensors
    layout: str | None = None  # tflite from a PyTorch model: NCHW (its own) or NHWC
    block_size: int | None = None  # int4_weight: weights in blocks of this many
    float_layers: tuple[str, ...] = ()  # int8 / int8_static: Keras layers (or ops) kept in float
    float_ops: tuple[str, ...] = ()  # tflite int8: kinds of ops kept in float (edgepress.deploy.layers.FLOAT_OPS)
    # int8_static: onnxruntime's quantize_static settings (calibration_method, per_channel, quant_format,
    # activation_type, weight_type); those not given take edgepress.deploy.onnx's defaults.
    onnx_static: dict[str, Any] = field(default_factory=dict)
    # A decoder LM (edgepress.deploy.decoder): its KV cache length and the prompt length its prefill takes.
    cache_len: int | None = None
    prompt_len: int | None = None

    @property
    def label(self) -> str:
        return f"{TITLES.get(self.format, self.format)} {self.precision}"


class Exporter:
    """One route to files of one format: the model kinds it converts and the precisions it makes."""

    format: ClassVar[str]
    kinds: ClassVar[frozenset[str]] = frozenset()
    precisions: ClassVar[tuple[str, ...]]

    def takes(self, source: Source) -> bool:
        """Whether it converts `source`: its kind is one of `kinds` (an exporter that needs one method of the model,
        such as `to_onnx`, asks for that instead, so a new kind that has it is exported with no change here)."""
        return source.kind in self.kinds

    def check(self, request: ExportRequest) -> None:
        """Raise EdgepressError if this request cannot be exported (called by the plan, and again by `export`)."""

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        """Write the file at `out`; return what its manifest keeps under `quantization`."""
        raise NotImplementedError

    def layout(self, request: ExportRequest) -> str | None:
        """The image layout the file's input takes (default: the model's)."""
        return request.source.layout


EXPORTERS: list[Exporter] = []
# The modules whose exporters register themselves, imported on first use.
EXPORTER_MODULES = ("decoder", "tflite", "torch_tflite", "onnx", "weight_only")


def register(cls: type[Exporter]) -> type[Exporter]:
    """Register an exporter class (the first registered that takes a request is the one that writes it)."""
    EXPORTERS.append(cls())
    return cls


def exporter_for(request: ExportRequest) -> Exporter:
    """The exporter of `request`'s format, model kind and precision; EdgepressError naming what exists otherwise."""
    _load()
    format, precision = request.format, request.precision
    if format not in PRECISIONS:
        raise EdgepressError(f"No exporter for format '{format}'; use one of: {', '.join(PRECISIONS)}.")
    if precision not in PRECISIONS[format]:
        raise EdgepressError(f"Unknown {TITLES[format]} precision '{precision}'. Use one of: "
                             f"{', '.join(PRECISIONS[format])}.")
    source = request.source
    for exporter in EXPORTERS:
        if exporter.format == format and precision in exporter.precisions and exporter.takes(source):
            return exporter
    why = source.why_not(format)
    if why:
        raise EdgepressError(f"{source.path or source.name}: {why}")
    made = [p for p in PRECISIONS[format] if any(e.format == format and p in e.precisions and e.takes(source)
                                                 for e in EXPORTERS)]
    raise EdgepressError(
        f"{TITLES[format]} {precision} from {request.source.title} is not available: "
        + (f"edgepress makes {', '.join(made)} from it. Ask for one of those." if made else
           f"edgepress has no {TITLES[format]} route from it.")
    )


def export(request: ExportRequest) -> Artifact:
    """Write `request`'s file atomically, check it against its model, and record its manifest; see the module doc."""
    from edgepress.deploy.check import compare
    from edgepress.deploy.coverage import manifest_fields
    from edgepress.deploy.layout import to_layout
    from edgepress.deploy.signature import signature

    exporter = exporter_for(request)
    exporter.check(request)
    layout = exporter.layout(request)
    decoder = request.source.kind == "decoder"  # a file with a KV cache: checked through prefill and decode
    if decoder:
        from edgepress.deploy.decoder_check import check_decoder, decoder_signature
    path = Path(request.path)
    with files.atomic_path(path) as tmp:
        quantization = exporter.write(request, tmp)
        check = {}
        if request.check_data is not None and decoder:
            check = check_decoder(request.source, tmp, request.check_data, request.prompt_len)
        elif request.check_data is not None:
            artifact_x = to_layout(request.check_data, request.source.layout, layout)
            check = compare(request.source, tmp, request.check_data, artifact_x)
    inputs, outputs = decoder_signature(path) if decoder else signature(path)
    quantization.update(manifest_fields(path))
    return Artifact.record(path, request.format, request.precision, inputs=inputs, outputs=outputs,
                           steps=list(request.steps), quantization=quantization, check=check, layout=layout)


def _load() -> None:
    """Import the modules that register exporters (each imports its converter only when it writes a file)."""
    for module in EXPORTER_MODULES:
        importlib.import_module(f"edgepress.deploy.{module}")
