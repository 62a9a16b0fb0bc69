"""`Artifact`: an exported model file plus its manifest.

The manifest sits beside the file as `<file>.json` and says what the file is (format, precision,
signature, quantization), where it came from (the chain of steps), how big it is, and how well it
agrees with the Keras model it was exported from.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepress import files


@dataclass
class TensorInfo:
    """One input or output of an exported model. `shape` uses -1 for a dynamic dimension."""

    name: str
    shape: list[int]
    dtype: str
    # (scale, zero_point) for a quantized tensor, so a runtime can feed floats and read floats back.
    quantization: tuple[float, int] | None = None

    def __post_init__(self) -> None:
        if self.quantization is not None:  # a JSON manifest gives a list back
            self.quantization = (float(self.quantization[0]), int(self.quantization[1]))


@dataclass
class Artifact:
    """An exported model file and what is known about it."""

    path: Path
    format: str  # "tflite" or "onnx"
    precision: str  # e.g. "fp32", "fp16", "dynamic", "int8", "int16x8", "int8_dynamic", "int8_static"
    sha256: str
    bytes: int
    gzip_bytes: int
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # the compression steps that made the source model
    quantization: dict[str, Any] = field(default_factory=dict)  # exporter options that shaped the file
    check: dict[str, Any] = field(default_factory=dict)  # agreement with the model the file was exported from
    # The image layout the file's input takes: "NHWC" (Keras, TFLite), "NCHW" (PyTorch), None (not an image).
    layout: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    @classmethod
    def describe(cls, path: str | Path, format: str, precision: str, **fields: Any) -> Artifact:
        """Build an Artifact for an existing file, measuring its hash and sizes."""
        path = Path(path)
        data = path.read_bytes()
        return cls(
            path=path,
            format=format,
            precision=precision,
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
            # mtime=0 keeps the gzip size independent of when the file was written.
            gzip_bytes=len(gzip.compress(data, compresslevel=9, mtime=0)),
            **fields,
        )

    @classmethod
    def record(cls, path: str | Path, format: str, precision: str, **fields: Any) -> Artifact:
        """`describe` a file an exporter has just written, and write its manifest beside it."""
        artifact = cls.describe(path, format, precision, **fields)
        artifact.save_manifest()
        return artifact

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    def save_manifest(self) -> Path:
        return files.write_text(self.manifest_path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        """Read the artifact at `path` (the model file) from its manifest."""
        path = Path(path)
        d = json.loads(path.with_name(path.name + ".json").read_text())
        d["path"] = path
        d["inputs"] = [TensorInfo(**t) for t in d["inputs"]]
        d["outputs"] = [TensorInfo(**t) for t in d["outputs"]]
        return cls(**d)
