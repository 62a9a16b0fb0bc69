"""What the graph kinds share: a model given as a file of operations, exported and measured as it is.

A plain SavedModel (edgepress.models.saved_model), an .onnx file (onnx_model) and a torch.export program
(torch_program) are graphs: no step retrains them here (their `why_no_steps` says what to do instead), every
post-training export of a format they reach applies. They run their own framework for `predict` and count their
parameters; MACs and sparsity are counted over Keras layers, which a graph has none of.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgepress import files
from edgepress.errors import EdgepressError
from edgepress.models import saving
from edgepress.models.source import shape_text


class Graph:
    """A model given as a graph file: exported and measured as it is, never retrained.

    Subclasses set `kind`, `path`, `name`, `input_name`, `input_dtype` and `input_shape`.
    """

    kind: ClassVar[str]
    path: Path
    name: str
    input_name: str
    input_dtype: np.dtype
    input_shape: tuple[int | None, ...]  # batch first

    # What a compression step would need and this model lacks; the run refuses steps with it.
    why_no_steps: str = "edgepress's compression steps wrap and retrain Keras layers, and this model has none"
    title = "a model graph"  # how messages name the kind
    suffix = ""  # of the copy a run keeps in models/ (a SavedModel is a directory)

    io_counts = (1, 1)  # each graph kind refuses other counts when it opens the file

    @property
    def layout(self) -> str | None:
        """The image layout its input takes: NHWC for a TensorFlow model's (N, H, W, C), None for other inputs."""
        return "NHWC" if len(self.input_shape) == 4 else None

    def why_not(self, format: str) -> str | None:
        """Why this model cannot be exported to `format`, or None when it can."""
        return None

    def takes_batch_size(self, format: str) -> bool:
        """Whether an export to `format` can fix the batch dimension."""
        return True

    def stats(self) -> dict:
        """Parameters; MACs and sparsity are counted over Keras layers, which a graph has none of."""
        return {"params": self.count_params(), "macs": None, "sparsity": None}

    def save(self, path: Path, like: str) -> dict:
        """Keep the model where the run keeps its models, in its own format (`path`'s suffix replaced), atomically."""
        target = path.with_suffix(self.suffix)
        with files.atomic_path(target) as tmp:
            self.write(tmp)
        return saving.write_manifest(target, self.kind, None, None)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Float32 outputs for `x` (cast to the model's input dtype), `batch_size` rows at a time."""
        x = np.asarray(x).astype(self.input_dtype, copy=False)
        step = self.input_shape[0] or batch_size  # a fixed batch in the file is the only one it takes
        outs = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            real = len(chunk)
            if real < step and self.input_shape[0]:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
            outs.append(np.asarray(self._run(chunk), dtype=np.float32)[:real])
        return np.concatenate(outs)

    def count_params(self) -> int:
        raise NotImplementedError

    def weights(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, values) of each weight; none for a kind that does not list them (its outputs are still checked)."""
        return iter(())

    def with_input_shape(self, sample_shape: Sequence[int]) -> Graph:
        """This graph with its unknown sample dimensions fixed to `sample_shape` (no batch)."""
        sample_shape = tuple(int(d) for d in sample_shape)
        known = self.input_shape[1:]
        fits = len(sample_shape) == len(known)
        if not fits or any(k is not None and k != s for k, s in zip(known, sample_shape, strict=True)):
            raise EdgepressError(
                f"model.input_shape {list(sample_shape)} does not fit the input '{self.input_name}' of {self.path}, "
                f"which is {shape_text(known)} per sample: give one size per dimension, equal to the known ones."
            )
        self.input_shape = (self.input_shape[0], *sample_shape)
        return self

    def write(self, path: Path) -> None:
        """Write the model's file (or directory) at `path`, in its own format."""
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def temporary(prefix: str, name: str) -> tuple[tempfile.TemporaryDirectory, Path]:
    """A temporary directory that lives as long as the graph holding it, and the path of `name` in it: where a
    model trained here (a zoo tf.Module or torch module) is saved, for the converters to read."""
    keep = tempfile.TemporaryDirectory(prefix=prefix)
    return keep, Path(keep.name) / name
