"""An .onnx file (e.g. a PyTorch model exported with `torch.onnx.export`), run by onnxruntime.

    source = OnnxSource(Path("model.onnx"))

Its ONNX exports are the file itself, converted to float16 or quantized by onnxruntime; there is no TFLite path
(`TFLITE_FROM_ONNX` says why). External data files must sit in the model's folder (checked before loading:
edgepress.models.trust.check_external_data).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgepress.errors import EdgepressError, first_line
from edgepress.limits import invoke_limit_s, memory_cap
from edgepress.models.graph import Graph, temporary
from edgepress.models.source import register
from edgepress.models.trust import check_external_data, check_onnx_ops

# Why an .onnx model has no TFLite export, for the run's notes. It is checked, not assumed: onnx2tf
# 2.x needs Python 3.12+, and onnx2tf 1.29 (the last for older Pythons) pins TensorFlow 2.19 and
# numpy 1.x, which would replace edgepress's TensorFlow 2.21.
TFLITE_FROM_ONNX = (
    "TFLite export from an .onnx model is not available: no maintained ONNX-to-TFLite converter installs "
    "beside edgepress's TensorFlow (onnx2tf 2.x needs Python 3.12+, onnx2tf 1.29 pins TensorFlow 2.19 and "
    "numpy 1.x). The ONNX exports are made and measured; for a .tflite file from a PyTorch model, pass its "
    "torch.export program (.pt2, `torch.export.save`) instead: litert-torch converts it to TFLite."
)



@register
class OnnxSource(Graph):
    """An .onnx file, run by onnxruntime. External data files must sit in the model's folder."""

    kind: ClassVar[str] = "onnx"
    title = "an ONNX model"
    suffix = ".onnx"
    why_no_steps = (
        "it is an ONNX graph: pruning and quantization-aware training wrap Keras layers with tfmot, and "
        "distillation trains a Keras student; compress the model in its own framework before exporting it, "
        "or use the ONNX post-training quantization (exports onnx int8_dynamic and int8_static)"
    )

    def __init__(self, path: str | Path, keep: object | None = None, trusted: bool = False) -> None:
        import onnx

        self.path = Path(path)
        self.name = self.path.stem
        self._keep = keep
        check_external_data(self.path)
        try:
            self._proto = onnx.load(str(self.path))  # with its external data, now known to be inside the folder
            if not trusted:
                check_onnx_ops(self.path, self._proto)
            onnx.checker.check_model(self._proto)
        except EdgepressError:
            raise
        except Exception as e:  # a protobuf DecodeError, onnx's ValidationError, OSError
            raise EdgepressError(
                f"Cannot load {self.path} as an ONNX model: {first_line(e)}. Export it again (torch.onnx.export, "
                "tf2onnx) and pass the .onnx file."
            ) from None
        newest = onnx.defs.onnx_opset_version()
        for opset in self._proto.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version > newest:
                raise EdgepressError(
                    f"{self.path} is stamped with ONNX opset {opset.version}, and this onnx and onnxruntime know "
                    f"opsets up to {newest}. Export the model again with an opset they know (e.g. opset 17)."
                )
        graph = self._proto.graph
        initializers = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise EdgepressError(
                f"{self.path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}) and {len(graph.output)} "
                f"outputs ({', '.join(o.name for o in graph.output)}); edgepress handles models with one input tensor "
                "and one output tensor (a classifier's logits or probabilities). Export the single-input, "
                "single-output model you deploy."
            )
        tensor = inputs[0].type.tensor_type
        self.input_name = inputs[0].name
        self.input_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        if self.input_dtype.kind not in "biuf":
            raise EdgepressError(
                f"{self.path} takes {onnx.TensorProto.DataType.Name(tensor.elem_type).lower()} input "
                f"'{self.input_name}'; edgepress feeds models numeric arrays (float or integer ids)."
            )
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        self._session = None

    @classmethod
    def wraps(cls, model) -> bool:
        return False

    @classmethod
    def opens(cls, path: Path) -> bool:
        return path.suffix.lower() == ".onnx"

    @classmethod
    def load(cls, path: Path, trusted: bool) -> OnnxSource:
        return cls(path, trusted=trusted)

    @classmethod
    def from_trained(cls, model, save: Callable[[object, Path], None]) -> OnnxSource:
        """A model trained here, written as .onnx by `save(model, path)` into a temporary directory, and opened."""
        keep, path = temporary("edgepress-onnx-", "model.onnx")
        save(model, path)
        return cls(path, keep=keep, trusted=True)  # written by this process from a model trained here

    def count_params(self) -> int:
        return int(sum(np.prod(i.dims) for i in self._proto.graph.initializer))

    def weights(self) -> Iterator[tuple[str, np.ndarray]]:
        from onnx import numpy_helper

        for initializer in self._proto.graph.initializer:
            yield initializer.name, numpy_helper.to_array(initializer)

    layout = None  # the file does not say which layout its image input takes

    def why_not(self, format: str) -> str | None:
        return TFLITE_FROM_ONNX if format == "tflite" else None

    def takes_batch_size(self, format: str) -> bool:
        return False  # the file keeps its own input shape

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        """The fp32 export is the file itself, at its own input shape (the exporter refuses a batch_size for it)."""
        self.write(out)

    def write(self, path: Path) -> None:
        """The model as one self-contained .onnx file (external data, if any, written inline)."""
        import onnx

        onnx.save(self._proto, str(path))

    def _run(self, x: np.ndarray) -> np.ndarray:
        # Making the session folds constants and a call computes them: a tiny file can ask for a huge tensor.
        with memory_cap(f"The ONNX model {self.path}"):
            return self._run_capped(x)

    def _run_capped(self, x: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        if self._session is None:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            try:
                self._session = ort.InferenceSession(
                    self._proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # an unknown op or opset, a type onnxruntime has no kernel for
                raise EdgepressError(
                    f"onnxruntime cannot run {self.path}: {first_line(e)}. Export the model again with ops and an "
                    "opset onnxruntime supports (torch.onnx.export or tf2onnx, opset 17)."
                ) from None
        # A graph can loop forever (a Loop whose condition never turns false): a call that does not return within
        # the limit is stopped (RunOptions.terminate) and reported.
        options, limit = ort.RunOptions(), invoke_limit_s()
        timer = threading.Timer(limit, lambda: setattr(options, "terminate", True))
        timer.start()
        try:
            return self._session.run(None, {self.input_name: x}, options)[0]
        except Exception as e:
            if options.terminate:
                raise EdgepressError(
                    f"{self.path} did not return within {limit:.0f} s on a batch of {len(x)} sample(s) "
                    "(a Loop that never ends?), and was stopped. Export a model that returns on every input."
                ) from None
            raise EdgepressError(f"onnxruntime could not run {self.path}: {first_line(e)}.") from None
        finally:
            timer.cancel()
