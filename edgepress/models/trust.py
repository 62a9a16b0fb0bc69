"""A model file is data: what in a file would run code when it is loaded, found before anything is loaded.

    check_untrusted(path, [model_config(path)])   # a Keras config: Lambda layers, serialized functions, modules
    check_graph(path, trusted)                     # a SavedModel graph that calls Python, or (untrusted) runs an
                                                   # op reaching outside the model (edgepress.models.graph_ops)
    check_external_data(path)                      # an .onnx file whose weights are read from outside its folder
    check_onnx_ops(path, proto)                    # an .onnx graph with custom-domain ops
    check_pt2_is_data(path)                        # a .pt2 program that torch.export.load would unpickle

Each kind of model (edgepress.models.keras3, tf_keras, saved_model, onnx_model, torch_program) calls its check
before loading unless the user said the file is trusted. Configs are read as JSON, graphs as protobufs:
nothing here deserializes a model.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from edgepress.compat import keras, quiet
from edgepress.errors import EdgepressError, first_line
from edgepress.limits import MAX_CONFIG_BYTES, zip_member
from edgepress.models.keras_files import MODEL_CLASSES, SAVE_HINT, SKIPPED_CONFIG_KEYS, TF_OP_LAYERS, read_model_config

TRUST_HINT = (
    "If you trust this file and whoever wrote it, allow its code with `model.trusted: true` in the recipe "
    "(`trusted: true` beside a distill student's `path`), `--trust-model` on the command line, or "
    "`load_model(path, trusted=True)` in Python"
)
# Keras namespaces whose objects a config may name (module "keras.layers", "keras.src.ops.numpy",
# "tf_keras.src.engine.functional", ...): layers, models and their parts, nothing that reads files or imports.
_KERAS_NAMESPACES = (
    "layers", "models", "engine", "ops", "initializers", "regularizers", "constraints", "activations",
    "dtype_policies", "quantizers", "random", "losses", "metrics", "optimizers",
)
# tf_keras records a TensorFlow call in a functional model (x + 1, tf.nn.relu(x)) as a TFOpLambda layer naming
# the function; it runs that TF function when the model is built and called. Math namespaces only: not tf.io
# (files), tf.compat, tf.raw_ops, nor the top-level functions below that print, load libraries or call Python.
_TF_OP_NAMESPACES = ("math", "nn", "linalg", "__operators__", "image", "signal", "bitwise", "random", "dtypes")
_TF_NOT_OPS = {
    "print", "py_function", "numpy_function", "load_op_library", "load_library", "function", "map_fn",
    "vectorized_map", "while_loop", "cond", "case", "switch_case", "foldl", "foldr", "scan", "custom_gradient",
    "recompute_grad", "init_scope", "device", "control_dependencies", "name_scope", "Module", "Variable",
}
# tf_keras layers that call a TensorFlow method named in the config, or build any raw TF op (a TF1 NodeDef, file
# writes included): refused in an untrusted file rather than checked name by name.
_TF_CALL_LAYERS = ("ClassMethod", "InstanceMethod", "InstanceProperty", "TensorFlowOpLayer")


def check_untrusted(path: Path, configs: list) -> None:
    """Refuse an untrusted model whose saved `configs` would run Python when deserialized.

    `configs` are read as JSON only (nothing deserialized): a Lambda layer (its marshalled bytecode or named
    function runs when the model is built), a serialized lambda anywhere, a Keras module outside the layer
    namespaces, a TFOpLambda outside TensorFlow's math ops, and custom objects (classes or functions from a
    module outside Keras, which Keras 3 would import) are refused, naming the layer.
    """
    found: list[str] = []
    custom: list[str] = []
    try:
        for config in configs:
            for layer, what in _code_in_config(config):
                entry = f"layer {layer!r} {what}"
                if entry not in found:  # a SavedModel repeats each layer's config in the model's
                    found.append(entry)
            # tfmot's own classes (a run's QAT model) are edgepress's dependency's, loaded by name: allowed.
            custom += [] if only_tfmot_classes(config) else custom_classes(config)
    except RecursionError:
        raise EdgepressError(
            f"{path} is refused: its saved config is nested too deeply to be checked, which no Keras model needs. "
            f"The file may be corrupt or crafted; {SAVE_HINT} again and pass the new file."
        ) from None
    if found:
        raise EdgepressError(
            f"{path} is refused: {'; '.join(found)}. A model file is data, and edgepress runs no code from it "
            f"unless told the file is trusted. {TRUST_HINT}; otherwise replace the layer with built-in Keras "
            f"layers and {SAVE_HINT} again."
        )
    if custom and path.is_file():  # a SavedModel revives a custom layer from its graph, running no Python
        raise custom_objects_error(path, custom)


def _code_in_config(config: Any) -> list[tuple[str, str]]:
    """(layer name, what it would run) for each part of a saved config that runs Python when deserialized."""
    found: list[tuple[str, str]] = []

    def visit(value: Any, layer: str) -> None:
        if isinstance(value, list):
            for item in value:
                visit(item, layer)
            return
        if not isinstance(value, dict):
            return
        what = _runs_python(value)
        if what:
            found.append((layer, what))
            return
        for key, item in value.items():
            if value is config and key in SKIPPED_CONFIG_KEYS:
                continue
            if key == "layers" and isinstance(item, list):
                for entry in item:
                    visit(entry, _layer_name(entry) or layer)
            else:
                visit(item, layer)

    visit(config, _layer_name(config) or "?")
    return found


def _layer_name(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    inner = entry.get("config")
    name = entry.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
    return name if isinstance(name, str) else None


def _runs_python(value: dict) -> str | None:
    """What Python the serialized object `value` would run when deserialized, or None."""
    class_name = value.get("class_name")
    if class_name == "Lambda":
        return "is a Lambda layer, whose Python function (saved in the file) runs when the model is loaded"
    if class_name == "__lambda__" or "function_type" in value:
        return "holds a serialized Python function (marshalled bytecode) that runs when the model is loaded"
    inner = value.get("config")
    if class_name in TF_OP_LAYERS:
        function = inner.get("function") if isinstance(inner, dict) else None
        if not _is_tf_math_op(function):
            return f"calls tf.{function}, which is not one of TensorFlow's math or neural-network ops"
    if class_name in _TF_CALL_LAYERS:
        return f"is a {class_name} layer, which calls the TensorFlow method or op its config names"
    module = value.get("module")
    if isinstance(module, str) and is_keras_module(module):
        if not _is_layer_namespace(module) or not (isinstance(class_name, str) and class_name.isidentifier()):
            return f"names {module}.{class_name}, which is not a Keras layer or one of its parts"
    return None


def _is_layer_namespace(module: str) -> bool:
    """keras, keras.layers, keras.src.ops.numpy, tf_keras.src.engine.functional: yes; keras.src.utils: no."""
    parts = module.split(".")[1:]
    if parts[:1] == ["src"]:
        parts = parts[1:]
        if not parts:
            return False
    return not parts or parts[0] in _KERAS_NAMESPACES


def _is_tf_math_op(function: Any) -> bool:
    if not isinstance(function, str) or not all(part.isidentifier() for part in function.split(".")):
        return False
    namespace, _, rest = function.partition(".")
    return namespace in _TF_OP_NAMESPACES if rest else function not in _TF_NOT_OPS


def custom_objects_error(path: Path, class_names: list[str]) -> EdgepressError:
    names = ", ".join(sorted(set(class_names)))
    return EdgepressError(
        f"Cannot load {path}: it uses custom object(s) {names} that edgepress cannot deserialize, "
        "because its steps and exporters work on plain Keras models. Pass a plain Keras model built "
        f"from built-in Keras layers and activations (replace {names} with built-in layers), then "
        f"{SAVE_HINT}."
    )


def custom_classes(config: Any) -> list[str]:
    """Class names in a saved model config that are neither Keras built-ins nor model classes."""
    tf_keras = keras()
    found: list[str] = []

    def visit(value: Any, is_layer_entry: bool = False) -> None:
        if isinstance(value, dict):
            class_name = value.get("class_name")
            module = value.get("module")
            if isinstance(class_name, str):
                if module is not None and not (isinstance(module, str) and is_keras_module(module)):
                    # Keras 3 stores a custom function as class "function" with its name as config.
                    found.append(value.get("config") if class_name == "function" else class_name)
                elif (
                    module is None
                    and is_layer_entry
                    and class_name not in MODEL_CLASSES + TF_OP_LAYERS
                    and not hasattr(tf_keras.layers, class_name)
                ):
                    found.append(class_name)  # Legacy .h5 configs name layers without a module.
            for key, item in value.items():
                if value is config and key in SKIPPED_CONFIG_KEYS:
                    continue
                if key == "layers" and isinstance(item, list):
                    for entry in item:
                        visit(entry, is_layer_entry=True)
                else:
                    visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(config)
    return [name for name in found if isinstance(name, str)]


def is_keras_module(module: str) -> bool:
    return module.split(".")[0] in ("keras", "tf_keras")



def tfmot_scope(config: Any) -> contextlib.AbstractContextManager:
    """The allow-list of tfmot's own classes: a scope that deserializes them, when they are all `config` uses.

    A run's QAT model keeps tfmot's quantize wrappers (they carry the int8 ranges its export needs), so
    `models/N-qat.keras` names QuantizeWrapperV2, QuantizeLayer, QuantizeAwareActivation and tfmot's quantize
    configs. These are classes of edgepress's own dependency, looked up by name in tfmot's registries
    (quantize_scope, prune_scope, cluster_scope), never imported from the module a file names; any other
    custom object leaves the scope empty and the load refuses it as before.
    """
    if config is None or not custom_classes(config) or not only_tfmot_classes(config):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for scope in _tfmot_scopes():
        stack.enter_context(scope)
    return stack


def only_tfmot_classes(config: Any) -> bool:
    """Whether every custom class `config` names is one of tfmot's registered classes, from tfmot's modules."""
    custom = set(custom_classes(config))
    if not custom:
        return True  # nothing to look up: tfmot (and TensorFlow) stay unimported
    known = {name for scope in _tfmot_scopes() for objects in scope.custom_objects for name in objects}
    return custom <= known and _modules_are_tfmot(config)


def _tfmot_scopes() -> list:
    with quiet():  # tfmot imports TensorFlow, whose native start-up lines are not asked for
        import tensorflow_model_optimization as tfmot

    return [tfmot.quantization.keras.quantize_scope(), tfmot.sparsity.keras.prune_scope(),
            tfmot.clustering.keras.cluster_scope()]


def _modules_are_tfmot(config: Any) -> bool:
    """Every non-Keras module a config names is tfmot's."""
    if isinstance(config, dict):
        module = config.get("module")
        if isinstance(module, str) and not is_keras_module(module) and module.split(".")[0] != _TFMOT:
            return False
        return all(_modules_are_tfmot(value) for value in config.values())
    if isinstance(config, list):
        return all(_modules_are_tfmot(value) for value in config)
    return True


_TFMOT = "tensorflow_model_optimization"


PYTHON_OPS = ("EagerPyFunc", "PyFunc", "PyFuncStateless")


def check_graph(path: Path, trusted: bool) -> None:
    """Refuse a SavedModel (plain or tf_keras's) whose graph calls Python (always: that Python is not in the file)
    or, unless `trusted`, runs an op that reaches outside the model (edgepress.models.graph_ops)."""
    from edgepress.models.graph_ops import refused_tf_ops

    proto = saved_model_proto(path)
    if proto is None:
        return  # tf.saved_model.load, next, says what is wrong with the file
    check_python_ops(path, proto)
    found = [] if trusted else refused_tf_ops(proto)
    if found:
        more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
        raise EdgepressError(
            f"{path} is refused: {'; '.join(found[:5])}{more}. A model file is data, and edgepress runs no graph op "
            f"that reaches outside the model (files, network, environment) unless told the file is trusted. "
            f"{TRUST_HINT}; otherwise save the model again without those ops."
        )


def check_onnx_ops(path: Path, proto) -> None:
    """Refuse an ONNX model (`proto`, read from `path`) with an op from a custom domain: code from a library outside
    onnxruntime (edgepress.models.graph_ops.ONNX_DOMAINS lists the domains onnxruntime implements itself)."""
    from edgepress.models.graph_ops import ONNX_DOMAINS, refused_onnx_ops

    found = refused_onnx_ops(proto)
    if found:
        known = ", ".join(sorted(set(ONNX_DOMAINS.values())))
        raise EdgepressError(
            f"{path} is refused: {'; '.join(found[:5])}. A custom-domain op is code from a library outside "
            f"onnxruntime, and a model file is data: edgepress runs only {known} unless told the file is trusted. "
            f"{TRUST_HINT}."
        )


def saved_model_proto(path: Path):
    """The SavedModel protobuf of the directory `path` (its graph file size-checked), or None if it does not parse."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    from edgepress.limits import MAX_GRAPH_BYTES, regular_file

    proto = saved_model_pb2.SavedModel()
    binary = path / "saved_model.pb"
    graph = binary if binary.exists() or binary.is_symlink() else path / "saved_model.pbtxt"
    regular_file(graph, "The SavedModel graph", MAX_GRAPH_BYTES)
    try:
        if graph is binary:
            proto.ParseFromString(graph.read_bytes())
        else:
            text_format.Parse(graph.read_text(), proto)
    except Exception:
        return None
    return proto


def check_python_ops(path: Path, proto) -> None:
    """Refuse a SavedModel whose graph calls Python: its functions cannot run outside the process that saved it.

    A SavedModel is graphs (GraphDefs and their function library) and variables, no pickled Python objects;
    loading it with tf.saved_model.load runs no code from the file, and this check names the one kind of op
    that would need Python the file does not have.
    """
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


def check_pt2_is_data(path: Path) -> None:
    """Refuse a .pt2 file unless `torch.export.load` can read it without unpickling anything from it.

    torch.export.load unpickles (`torch.load(weights_only=False)`, `pickle.loads`) weights and constants marked
    `use_pickle` (tensor subclasses), custom and opaque objects, legacy `.pt` weight files and AOTInductor
    packages, and falls back to a full unpickle when the sample inputs do not load as plain tensors: any of these
    could run code from the file. What torch.export.save writes for a plain module has none of them.
    """
    import io
    import json
    import zipfile

    import torch
    from torch.export.pt2_archive import constants as names

    def refuse(what: str) -> EdgepressError:
        return EdgepressError(
            f"{path} is refused: {what}, which torch.export.load would unpickle, running code from the file. "
            "edgepress reads .pt2 files that hold a graph and plain tensors only; export the model again with "
            "`torch.export.save(torch.export.export(model.eval(), (sample_input,)), path)` from plain tensors "
            "(or pass the nn.Module and a sample input from Python)."
        )

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.namelist()
            if not any(n.split("/", 1)[-1] == names.ARCHIVE_FORMAT_PATH for n in entries):
                raise EdgepressError(
                    f"Cannot load {path} as a PyTorch exported program: it is a zip file without the archive_format "
                    "entry torch.export.save writes (an older torch.export file, or a torch.save checkpoint). Export "
                    "the model again with `torch.export.save(torch.export.export(model.eval(), (sample_input,)), "
                    "'model.pt2')`."
                )
            for name in entries:
                inner = name.split("/", 1)[-1]
                if inner.startswith(names.AOTINDUCTOR_DIR):
                    raise refuse("it holds an AOTInductor package")
                if inner.startswith((names.WEIGHTS_DIR, names.CONSTANTS_DIR)) and inner.endswith(".pt"):
                    raise refuse(f"its entry {inner} is a pickled (legacy) weights file")
                if inner.endswith(("_weights_config.json", "_constants_config.json")):
                    config = json.loads(zip_member(archive, name, path, MAX_CONFIG_BYTES))
                    entries = config.get("config") if isinstance(config, dict) else None
                    if not isinstance(entries, dict) or not all(isinstance(m, dict) for m in entries.values()):
                        raise EdgepressError(
                            f"Cannot load {path} as a PyTorch exported program: its {inner.rsplit('/', 1)[-1]} (the "
                            "weights config) is not the mapping torch.export.save writes. The file is damaged or "
                            "was not written by torch.export.save; export the model again."
                        )
                    for key, meta in entries.items():
                        pickled = meta.get("use_pickle") or str(meta.get("path_name", "")).startswith(
                            (names.CUSTOM_OBJ_FILENAME_PREFIX, names.OPAQUE_OBJ_FILENAME_PREFIX))
                        if pickled:
                            raise refuse(f"its weight or constant {key!r} is a pickled object")
                if inner.startswith(names.SAMPLE_INPUTS_DIR):
                    try:
                        torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                    except Exception:
                        raise refuse(f"its sample inputs ({inner}) are not plain tensors") from None
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise EdgepressError(
            f"Cannot load {path} as a PyTorch exported program: {first_line(e)}. A .pt2 model is what "
            "`torch.export.save(torch.export.export(model.eval(), (sample_input,)), 'model.pt2')` writes."
        ) from None


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


def load_error(path: Path, error: Exception, loader: str) -> EdgepressError:
    """Turn a loader's exception into one paragraph naming the path and what to do."""
    custom = custom_classes(read_model_config(path)) if path.is_file() else []
    if custom:
        return custom_objects_error(path, custom)
    return EdgepressError(
        f"Cannot load {path} with {loader}: {first_line(error)}. The file may be corrupt or "
        "truncated, or use custom layers or functions that edgepress cannot deserialize; pass a "
        f"plain Keras model (built from built-in Keras layers), or {SAVE_HINT} again."
    )
