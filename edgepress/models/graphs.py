"""Models edgepress exports and measures but cannot train: plain TF SavedModels and ONNX files.

    model = open_graph("model.onnx")          # an OnnxGraph
    model = open_graph("saved_model_dir")     # a SavedModelGraph (a SavedModel with no Keras model in it)

A run starts from one of three kinds of model:

- a Keras model: the compression steps apply (they wrap and retrain Keras layers);
- a `SavedModelGraph`, e.g. a raw `tf.Module` saved with `tf.saved_model.save`: exported to TFLite
  (`TFLiteConverter.from_saved_model`, every post-training precision) and to ONNX (tf2onnx);
- an `OnnxGraph`, e.g. a PyTorch model exported with `torch.onnx.export`: the ONNX exports are the
  file itself, converted to float16 or quantized by onnxruntime; there is no TFLite path (see
  `TFLITE_FROM_ONNX`).

Both graph kinds offer what the exporters, the export checks and the report use from a Keras model:
`name`, `input_shape` (batch first, None where unknown), `predict(x)` and `count_params()`.
TensorFlow, onnx and onnxruntime are imported inside functions only.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.errors import EdgepressError, first_line

# Why an .onnx model has no TFLite export, for the run's notes. It is checked, not assumed: onnx2tf
# 2.x needs Python 3.12+, and onnx2tf 1.29 (the last for older Pythons) pins TensorFlow 2.19 and
# numpy 1.x, which would replace edgepress's TensorFlow 2.21.
TFLITE_FROM_ONNX = (
    "TFLite export from an .onnx model is not available: no maintained ONNX-to-TFLite converter installs "
    "beside edgepress's TensorFlow (onnx2tf 2.x needs Python 3.12+, onnx2tf 1.29 pins TensorFlow 2.19 and "
    "numpy 1.x). The ONNX exports are made and measured; for a .tflite file, convert the original model "
    "with its own framework's TFLite exporter."
)


class Graph:
    """A model given as a graph file: exported and measured as it is, never retrained.

    Subclasses set `kind`, `path`, `name`, `input_name`, `input_dtype` and `input_shape`.
    """

    kind: str
    path: Path
    name: str
    input_name: str
    input_dtype: np.dtype
    input_shape: tuple[int | None, ...]  # batch first

    # What a compression step would need and this model lacks; the run refuses steps with it.
    why_no_steps: str = "edgepress's compression steps wrap and retrain Keras layers, and this model has none"
    trainable = False  # the compression steps do not apply
    title = "a model graph"  # how messages name the kind

    def why_not(self, format: str) -> str | None:
        """Why this model cannot be exported to `format`, or None when it can."""
        return None

    def takes_batch_size(self, format: str) -> bool:
        """Whether an export to `format` can fix the batch dimension."""
        return True

    def stats(self) -> dict:
        """Parameters; MACs and sparsity are counted over Keras layers, which a graph has none of."""
        return {"params": self.count_params(), "macs": None, "sparsity": None}

    def save(self, path: Path) -> Path:
        """Keep the model where the run keeps its models, in its own format (`path`'s suffix replaced)."""
        return self.save_copy(path.with_suffix(self.suffix))

    suffix = ""

    def predict(self, x: np.ndarray, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
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

    def with_input_shape(self, sample_shape: Sequence[int]) -> Graph:
        """This graph with its unknown sample dimensions fixed to `sample_shape` (no batch)."""
        sample_shape = tuple(int(d) for d in sample_shape)
        known = self.input_shape[1:]
        fits = len(sample_shape) == len(known)
        if not fits or any(k is not None and k != s for k, s in zip(known, sample_shape, strict=True)):
            raise EdgepressError(
                f"model.input_shape {list(sample_shape)} does not fit the input '{self.input_name}' of {self.path}, "
                f"which is {_shown(known)} per sample: give one size per dimension, equal to the known ones."
            )
        self.input_shape = (self.input_shape[0], *sample_shape)
        return self

    def save_copy(self, path: Path) -> Path:
        """Write this model where the run keeps its models, atomically; returns the path written."""
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class SavedModelGraph(Graph):
    """A TensorFlow SavedModel without a Keras model in it, called through its serving signature."""

    kind = "saved_model"
    title = "a plain TensorFlow SavedModel"
    why_no_steps = (
        "it is a plain TensorFlow SavedModel (tf.Variables and a tf.function, no Keras layers): pruning and "
        "quantization-aware training wrap Keras layers with tfmot, and distillation trains a Keras student"
    )

    def __init__(self, path: str | Path, keep: object | None = None) -> None:
        from edgepress.compat import quiet, tensorflow

        tf = tensorflow()
        self.path = Path(path)
        self.name = self.path.name
        self._keep = keep  # a TemporaryDirectory that holds the files, when edgepress saved them
        check_python_ops(self.path)
        try:
            with quiet():
                self._loaded = tf.saved_model.load(str(self.path))
        except Exception as e:  # TF raises OSError, ValueError and its own errors for bad directories
            raise EdgepressError(
                f"Cannot load the SavedModel {self.path}: {first_line(e)}. Save it again with tf.saved_model.save."
            ) from None
        signatures = dict(self._loaded.signatures)
        if SERVING not in signatures:
            others = f" (it has: {', '.join(signatures)})" if signatures else ""
            raise EdgepressError(
                f"The SavedModel {self.path} has no serving signature '{SERVING}'{others}, so edgepress cannot "
                "tell which function is the model, nor its input shape. Save it with one: "
                "tf.saved_model.save(module, path, signatures={'serving_default': module.__call__}), where "
                "__call__ is a tf.function with an input_signature, e.g. [tf.TensorSpec([None, 784], tf.float32)]."
            )
        self._function = signatures[SERVING]
        args, kwargs = self._function.structured_input_signature
        outputs = self._function.structured_outputs
        if args or len(kwargs) != 1 or len(outputs) != 1:
            raise EdgepressError(
                f"The serving signature of {self.path} has inputs {sorted(kwargs) or list(args)} and outputs "
                f"{sorted(outputs)}; edgepress handles models with one input tensor and one output tensor."
            )
        (self.input_name, spec), = kwargs.items()
        self._output_name = next(iter(outputs))
        self.input_dtype = np.dtype(spec.dtype.as_numpy_dtype)
        self._signature_shape = tuple(spec.shape.as_list())
        self.input_shape = self._signature_shape

    @classmethod
    def from_module(cls, module, save: Callable[[object, Path], None]) -> SavedModelGraph:
        """Save a trained `tf.Module` with `save(module, path)` into a temporary directory and open it.

        The directory lives as long as the returned graph (the converters read the files).
        """
        keep = tempfile.TemporaryDirectory(prefix="edgepress-savedmodel-")
        path = Path(keep.name) / (getattr(module, "name", None) or "module")
        save(module, path)
        return cls(path, keep=keep)

    def count_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self._function.variables))

    def tf_function(self):
        """The serving function as a tf.function of one tensor named `input`, for tf2onnx and fixed shapes."""
        from edgepress.compat import tensorflow

        tf = tensorflow()
        function, name, output = self._function, self.input_name, self._output_name
        return tf.function(lambda input: function(**{name: input})[output])

    def tflite_converter(self, batch_size: int | None = None):
        """A TFLiteConverter for this model, its input fixed to `batch_size` rows if given.

        The SavedModel itself is converted when its signature already has the shape wanted; otherwise
        (a fixed batch, or sample dimensions fixed by the recipe) a concrete function of the serving
        signature at that shape is.
        """
        from edgepress.compat import tensorflow

        tf = tensorflow()
        shape = (batch_size or self.input_shape[0], *self.input_shape[1:])
        if shape == self._signature_shape:
            return tf.lite.TFLiteConverter.from_saved_model(str(self.path), signature_keys=[SERVING])
        spec = tf.TensorSpec(shape, tf.as_dtype(self.input_dtype), name="input")
        return tf.lite.TFLiteConverter.from_concrete_functions(
            [self.tf_function().get_concrete_function(spec)], self._loaded
        )

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        import tf2onnx

        from edgepress.compat import tensorflow

        tf = tensorflow()
        spec = (tf.TensorSpec((batch_size, *self.input_shape[1:]), tf.as_dtype(self.input_dtype), name="input"),)
        tf2onnx.convert.from_function(self.tf_function(), input_signature=spec, opset=opset, output_path=str(out))

    def save_copy(self, path: Path) -> Path:
        with files.atomic_path(path) as tmp:
            shutil.copytree(self.path, tmp)
        return path

    def _run(self, x: np.ndarray) -> np.ndarray:
        from edgepress.compat import tensorflow

        tf = tensorflow()
        return self._function(**{self.input_name: tf.constant(x)})[self._output_name].numpy()


SERVING = "serving_default"
# Ops that call back into Python (tf.py_function, tf.numpy_function). The SavedModel holds no Python: the op names
# a function registered in the process that saved the model, so here it can only fail when the model is called.
PYTHON_OPS = ("EagerPyFunc", "PyFunc", "PyFuncStateless")


def check_python_ops(path: Path) -> None:
    """Refuse a SavedModel whose graph calls Python: its functions cannot run outside the process that saved it.

    A SavedModel is graphs (GraphDefs and their function library) and variables, no pickled Python objects;
    loading it with tf.saved_model.load runs no code from the file, and this check names the one kind of op
    that would need Python the file does not have.
    """
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        if (path / "saved_model.pb").exists():
            proto.ParseFromString((path / "saved_model.pb").read_bytes())
        else:
            text_format.Parse((path / "saved_model.pbtxt").read_text(), proto)
    except Exception:
        return  # tf.saved_model.load, next, says what is wrong with the file
    for meta_graph in proto.meta_graphs:
        graphs = [("the graph", meta_graph.graph_def.node)]
        graphs += [(f"function {f.signature.name}", f.node_def) for f in meta_graph.graph_def.library.function]
        for where, nodes in graphs:
            for node in nodes:
                if node.op in PYTHON_OPS:
                    raise EdgepressError(
                        f"{path} is refused: {where} calls Python through the op {node.op} (tf.py_function or "
                        "tf.numpy_function), and a SavedModel does not hold that Python function: it existed only "
                        "in the process that saved the model. Write that part with TensorFlow ops and save the "
                        "model again."
                    )


class OnnxGraph(Graph):
    """An .onnx file, run by onnxruntime. External data files must sit in the model's folder."""

    kind = "onnx"
    title = "an ONNX model"
    suffix = ".onnx"
    why_no_steps = (
        "it is an ONNX graph: pruning and quantization-aware training wrap Keras layers with tfmot, and "
        "distillation trains a Keras student; compress the model in its own framework before exporting it, "
        "or use the ONNX post-training quantization (exports onnx int8_dynamic and int8_static)"
    )

    def __init__(self, path: str | Path, keep: object | None = None) -> None:
        import onnx

        self.path = Path(path)
        self.name = self.path.stem
        self._keep = keep
        check_external_data(self.path)
        try:
            self._proto = onnx.load(str(self.path))  # with its external data, now known to be inside the folder
            onnx.checker.check_model(self._proto)
        except Exception as e:  # a protobuf DecodeError, onnx's ValidationError, OSError
            raise EdgepressError(
                f"Cannot load {self.path} as an ONNX model: {first_line(e)}. Export it again (torch.onnx.export, "
                "tf2onnx) and pass the .onnx file."
            ) from None
        graph = self._proto.graph
        initializers = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise EdgepressError(
                f"{self.path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); edgepress handles "
                "models with one input tensor."
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

    def count_params(self) -> int:
        return int(sum(np.prod(i.dims) for i in self._proto.graph.initializer))

    def why_not(self, format: str) -> str | None:
        return TFLITE_FROM_ONNX if format == "tflite" else None

    def takes_batch_size(self, format: str) -> bool:
        return False  # the file keeps its own input shape

    def tflite_converter(self, batch_size: int | None = None):
        raise EdgepressError(f"{self.path}: {TFLITE_FROM_ONNX}")

    def to_onnx(self, out: Path, batch_size: int | None, opset: int) -> None:
        """The fp32 export is the file itself."""
        if batch_size is not None:
            raise EdgepressError(
                f"batch_size applies to models edgepress converts; {self.path} is already ONNX and keeps its own "
                "input shape. Remove batch_size from its ONNX exports."
            )
        self.save_copy(out)

    def save_copy(self, path: Path) -> Path:
        """The model as one self-contained .onnx file (external data, if any, written inline)."""
        import onnx

        with files.atomic_path(path) as tmp:
            onnx.save(self._proto, str(tmp))
        return path

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                self._proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return self._session.run(None, {self.input_name: x})[0]


# The graph kinds, by the `kind` each reports.
GRAPH_KINDS: dict[str, type[Graph]] = {"saved_model": SavedModelGraph, "onnx": OnnxGraph}


def open_graph(path: str | Path) -> Graph | None:
    """The .onnx file or plain SavedModel at `path` as a Graph; None for anything else (a Keras model file)."""
    from edgepress.models.loading import is_plain_saved_model

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise EdgepressError(f"Model not found: {path} does not exist. Pass the path of an .onnx file.")
        return OnnxGraph(path)
    if path.is_dir() and is_plain_saved_model(path):
        return SavedModelGraph(path)
    return None


def from_trained(model, save: Callable[[object, Path], None], kind: str) -> Graph:
    """A trained model of another framework (a zoo tf.Module or PyTorch module), saved by `save` and opened."""
    if kind == "saved_model":
        return SavedModelGraph.from_module(model, save)
    keep = tempfile.TemporaryDirectory(prefix="edgepress-onnx-")
    path = Path(keep.name) / "model.onnx"
    save(model, path)
    return OnnxGraph(path, keep=keep)


def input_dtype(model) -> np.dtype:
    """The input dtype of a Keras model or a Graph (float32 for most; int32 for token ids)."""
    if hasattr(model, "input_dtype"):  # a Graph, or a model behind the source interface
        return model.input_dtype
    return np.dtype(model.inputs[0].dtype.as_numpy_dtype)


def check_external_data(path: Path) -> None:
    """Refuse an .onnx file whose external data is missing or lies outside the file's folder.

    An external data `location` is a path the loader opens and reads: one that climbs out of the
    model's folder (`../`, an absolute path, a symlink pointing elsewhere) would let a model file
    read any file of the machine into its weights.
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EdgepressError(
            f"Cannot read {path} as an ONNX model: {first_line(e)}. Export it again and pass the .onnx file."
        ) from None
    folder = path.resolve().parent
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise EdgepressError(
                f"{path} is refused: its tensor '{tensor.name}' keeps its data in '{location}', outside the model's "
                f"folder {folder}. External data must be files beside the .onnx file; re-save the model with "
                "onnx.save_model(model, path, save_as_external_data=True) or as a single file."
            )
        if not target.is_file():
            raise EdgepressError(
                f"{path}: its tensor '{tensor.name}' keeps its data in '{location}', which does not exist in "
                f"{folder}. Copy the external data file beside the .onnx file."
            )


def _tensors(graph):
    """Every TensorProto of an ONNX graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _shown(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
