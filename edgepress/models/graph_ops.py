"""Which TensorFlow ops a model file's graph may hold when the file is not trusted: an allow-list by family.

    refused_tf_ops(proto)    # a SavedModel's ops that could touch files, the network, the environment or state
                             # outside the model, each named with the function it is in
    refused_onnx_ops(proto)  # an ONNX model's custom-domain ops

edgepress.models.trust refuses a model with any of them unless it is trusted.

A SavedModel is data only as long as its ops are: `tf.io.write_file`, `tf.io.read_file`, `tf.io.matching_files`,
a checkpoint written to a path of the file's choosing are ops too, and loading the model and calling its serving
function (as every run does to check the model against the data) would run them. So every op of the graph edgepress
could run is checked against the families below, named by TensorFlow's own op modules, and any other op (a file,
dataset, summary, network, debug-dump or Python op, an op TensorFlow does not know) is refused, naming the op and
the function it is in. The check reads the graph as a protobuf; nothing is loaded.

Which graph is checked: every node of the GraphDef and every function of its library, strictly, except the
SavedModel's own saver (the nodes its `saver_def` names and what they call), which must read and write
checkpoints. There the checkpoint ops (SaveV2, RestoreV2, MergeV2Checkpoints...) are allowed too, and only when
their path comes from the saver's filename placeholder (which the loader feeds with the SavedModel's own
`variables/` path), joined with constant suffixes that do not climb out of it (no `..`, no absolute path).
"""

from __future__ import annotations

import functools

# Families of ops that compute on tensors in memory and touch nothing outside the model, by the TensorFlow module
# that defines them (tensorflow.python.ops.gen_<family>), with why each is safe.
SAFE_FAMILIES = {
    "gen_math_ops": "arithmetic, comparisons, reductions and casts on tensors",
    "gen_nn_ops": "convolutions, pooling, activations, normalization",
    "gen_array_ops": "shapes, slicing, concatenation, gathers, constants and placeholders (ImmutableConst aside)",
    "gen_linalg_ops": "matrix decompositions and solvers",
    "gen_bitwise_ops": "bitwise arithmetic",
    "gen_spectral_ops": "FFTs",
    "gen_special_math_ops": "special functions (Bessel, ...)",
    "gen_manip_ops": "Roll",
    "gen_image_ops": "resizing, cropping and colour math; decoders take bytes held in tensors, not files",
    "gen_string_ops": "string manipulation in memory (a SavedModel's saver builds its file names with them)",
    "gen_random_ops": "random numbers",
    "gen_stateless_random_ops": "random numbers from a seed",
    "gen_stateless_random_ops_v2": "random numbers from a seed",
    "gen_stateful_random_ops": "random numbers from the model's own generator variable",
    "gen_resource_variable_ops": "the model's own variables (created when it is loaded, in this process)",
    "gen_state_ops": "the model's own variables in TF1 graphs",
    "gen_control_flow_ops": "TF1 control flow (Switch, Merge, loops) and NoOp (Abort aside)",
    "gen_functional_ops": "calls of the graph's own functions, If, While, Case (RemoteCall aside)",
    "gen_list_ops": "tensor lists that loops build in memory",
    "gen_map_ops": "tensor maps in memory",
    "gen_optional_ops": "optional values in memory",
    "gen_rnn_ops": "fused LSTM and GRU cells",
    "gen_cudnn_rnn_ops": "fused recurrent layers (tf_keras saves a cuDNN variant of every LSTM and GRU)",
    "gen_uniform_quant_ops": "quantized arithmetic",
    "gen_sparse_ops": "sparse tensor arithmetic",
    "gen_ragged_array_ops": "ragged tensor arithmetic",
    "gen_ragged_conversion_ops": "ragged tensor conversions",
    "gen_ragged_math_ops": "ragged ranges",
    "gen_set_ops": "set operations on tensors",
    "gen_count_ops": "counting values",
    "gen_composite_tensor_ops": "composite tensors (ragged, sparse) packed and unpacked",
    "gen_ctc_ops": "CTC decoding and loss",
}
# Ops of a safe family that are not safe: they reach outside the model.
UNSAFE_IN_SAFE_FAMILIES = {
    "ImmutableConst": "maps a file into memory",
    "Abort": "ends the process",
    "RemoteCall": "runs a function on another device or machine",
}
# Single safe ops of families that are otherwise refused, and the graph's own plumbing (not in tf.raw_ops).
SAFE_OPS = {
    "_Arg", "_Retval", "_DeviceArg", "_DeviceRetval",  # a function's arguments and results
    "Assert", "Print", "Timestamp",  # logging: a failed check, a print to stderr, the clock
    "PrintV2",  # only to the console: its output_stream is checked (`_prints_to_file`)
    "DynamicPartition", "DynamicStitch", "ParallelDynamicStitch",  # data flow in memory
    "TensorArrayV3", "TensorArrayReadV3", "TensorArrayWriteV3", "TensorArrayGatherV3", "TensorArrayScatterV3",
    "TensorArrayConcatV3", "TensorArraySplitV3", "TensorArraySizeV3", "TensorArrayCloseV3", "TensorArrayGradV3",
    "TensorArrayGradWithShape",  # TF1 loops' arrays in memory
    "StackV2", "StackPushV2", "StackPopV2", "StackCloseV2",
}
# A SavedModel's saver reads and writes its checkpoint with these: allowed only inside the saver, and only on a path
# from its filename placeholder. Each: the input positions that are paths.
CHECKPOINT_OPS = {
    "SaveV2": (0,), "RestoreV2": (0,), "MergeV2Checkpoints": (0, 1), "Save": (0,), "SaveSlices": (0,),
    "Restore": (0,), "RestoreSlice": (0,), "ShardedFilename": (0,), "ShardedFilespec": (0,),
}
# How the saver builds a path from its placeholder: ops that pass a path on (the first input of a join is the path).
_PATH_OPS = {"Identity", "Snapshot", "StringJoin", "ShardedFilename", "Pack"}
# What refused ops do, for the message (families by module, then single ops).
WHAT_FAMILIES = {
    "gen_io_ops": "reads or writes files", "gen_dataset_ops": "reads data files",
    "gen_experimental_dataset_ops": "reads or writes data files", "gen_summary_ops": "writes summary files",
    "gen_logging_ops": "writes summaries", "gen_debug_ops": "writes debug dumps", "gen_lookup_ops":
    "builds tables (from files too)", "gen_checkpoint_ops": "reads checkpoint files", "gen_script_ops": "calls Python",
    "gen_collective_ops": "talks to other processes or machines", "gen_sendrecv_ops": "talks to other devices",
    "gen_nccl_ops": "talks to other devices", "gen_filesystem_ops": "configures file systems",
    "gen_decode_proto_ops": "reads protobuf descriptors (from files too)", "gen_data_flow_ops":
    "keeps state in queues or sessions outside the model", "gen_tpu_ops": "drives TPUs",
}
WHAT_OPS = {
    "WriteFile": "writes a file", "ReadFile": "reads a file", "MatchingFiles": "lists files",
    "MergeV2Checkpoints": "merges checkpoint files and deletes the originals",
    "SaveV2": "writes a checkpoint file", "Save": "writes a checkpoint file", "SaveSlices": "writes a checkpoint file",
    "RestoreV2": "reads a checkpoint file", "Restore": "reads a checkpoint file",
    "RestoreSlice": "reads a checkpoint file",
    "PrintV2": "prints to a file", "InitializeTableFromTextFile": "reads a file", "InitializeTableFromTextFileV2":
    "reads a file", **UNSAFE_IN_SAFE_FAMILIES,
}
_CONSOLE_STREAMS = {b"stderr", b"stdout", b"log(info)", b"log(warning)", b"log(error)"}


@functools.cache
def _families() -> dict[str, str]:
    """Every op TensorFlow registers, by the name of the module (gen_math_ops, ...) that defines it."""
    from edgepress.compat import tensorflow

    tf = tensorflow()
    return {name: getattr(getattr(tf.raw_ops, name), "__module__", "").rsplit(".", 1)[-1]
            for name in dir(tf.raw_ops) if not name.startswith("_")}


def is_safe_op(op: str) -> bool:
    """Whether `op` computes on tensors in memory only (see SAFE_FAMILIES)."""
    if op in SAFE_OPS:
        return True
    return op not in UNSAFE_IN_SAFE_FAMILIES and _families().get(op) in SAFE_FAMILIES


def what_op_does(op: str) -> str:
    """Why `op` is refused, in a few words."""
    if op in WHAT_OPS:
        return WHAT_OPS[op]
    family = _families().get(op)
    if family is None:
        return "is not an op this TensorFlow knows (a custom op, loaded from a library)"
    return WHAT_FAMILIES.get(family, "is not one of the math, array and control ops a model computes with")


def refused_tf_ops(proto) -> list[str]:
    """What in a SavedModel (its parsed `saved_model_pb2.SavedModel` `proto`) is outside the allow-list: "function F
    runs the op WriteFile, which writes a file", one entry per op and place (see the module's doc)."""
    found: list[str] = []
    for meta_graph in proto.meta_graphs:
        for where, op, what in _GraphCheck(meta_graph).refused():
            entry = f"{where} runs the op {op}, which {what}"
            if entry not in found:
                found.append(entry)
    return found


class _GraphCheck:
    """The ops of one MetaGraph that are refused: (where, op, what it does)."""

    def __init__(self, meta_graph) -> None:
        self.graph = meta_graph.graph_def
        self.library = {f.signature.name: f for f in self.graph.library.function}
        self.saver = meta_graph.saver_def if meta_graph.HasField("saver_def") else None
        # The functions tf.saved_model.load restores as callables (signatures, and resource initializers it runs).
        self.restored = list(meta_graph.object_graph_def.concrete_functions)
        self.found: list[tuple[str, str, str]] = []
        self.checked: set = set()

    def refused(self) -> list[tuple[str, str, str]]:
        nodes = {node.name: node for node in self.graph.node}
        region, filename = self._saver_region(nodes)
        sources = {filename} if filename else set()
        for node in self.graph.node:
            if node.name in region:
                self._node(node, nodes, "the graph's saver", sources)
            else:
                self._node(node, nodes, "the graph", None)
        for name in self.restored:
            self._function(name, None)
        # Every other function, also those nothing seems to call, except what only the saver calls.
        saver_only = {name for name, sources in self.checked if sources is not None}
        for name in self.library:
            if name not in saver_only:
                self._function(name, None)
        return self.found

    def _saver_region(self, nodes: dict) -> tuple[set[str], str | None]:
        """The GraphDef nodes of the saver (what its save and restore ops depend on), and its filename node."""
        if self.saver is None:
            return set(), None
        filename = _node_name(self.saver.filename_tensor_name)
        region: set[str] = set()
        todo = [_node_name(self.saver.save_tensor_name), _node_name(self.saver.restore_op_name)]
        while todo:
            name = todo.pop()
            if name in region or name not in nodes or name == filename:
                continue
            region.add(name)
            todo += [_node_name(i) for i in nodes[name].input]
        return region, filename

    def _function(self, name: str, sources: frozenset[int] | None) -> None:
        """Check function `name`; `sources`: the positions of its arguments that are the saver's path (None: a
        function outside the saver, checked strictly)."""
        key = (name, sources)
        if key in self.checked or name not in self.library:
            return
        self.checked.add(key)
        function = self.library[name]
        nodes = {node.name: node for node in function.node_def}
        arg_names = None
        if sources is not None:
            args = [a.name for a in function.signature.input_arg]
            arg_names = {args[i] for i in sources if i < len(args)}
        for node in function.node_def:
            self._node(node, nodes, f"function {name}", arg_names)

    def _node(self, node, nodes: dict, where: str, sources: set[str] | None) -> None:
        """Check one node: its op, then the functions it calls (a saver's call passes the path on)."""
        op = node.op
        if op in self.library:  # a call of one of the graph's own functions
            self._call(op, node, nodes, sources)
        elif op in CHECKPOINT_OPS and sources is not None:
            if not all(i < len(node.input) and _is_path(node.input[i], nodes, sources) for i in CHECKPOINT_OPS[op]):
                self.found.append((where, op, WHAT_OPS.get(op, "reads or writes files") +
                                   " at a path that is not the SavedModel's own"))
        elif not is_safe_op(op) or (op == "PrintV2" and _prints_to_file(node)):
            self.found.append((where, op, what_op_does(op)))
        for key, value in node.attr.items():
            functions = [value.func] if value.HasField("func") else list(value.list.func)
            for called in functions:
                if key == "f" and op in ("PartitionedCall", "StatefulPartitionedCall"):
                    self._call(called.name, node, nodes, sources)
                else:
                    self._function(called.name, None)  # a branch or loop body: strictly

    def _call(self, name: str, node, nodes: dict, sources: set[str] | None) -> None:
        if sources is None:
            self._function(name, None)
            return
        data = [i for i in node.input if not i.startswith("^")]
        self._function(name, frozenset(i for i, tensor in enumerate(data) if _is_path(tensor, nodes, sources)))


def _node_name(tensor: str) -> str:
    """The node of a tensor reference: "x", "x:0", "node:output:0", "^node" -> the node's name."""
    return tensor.lstrip("^").split(":")[0]


def _is_path(tensor: str, nodes: dict, sources: set[str], depth: int = 0) -> bool:
    """Whether `tensor` is the saver's path: one of `sources`, passed on by _PATH_OPS, joined with suffixes only."""
    name = _node_name(tensor)
    if name in sources:
        return True
    node = nodes.get(name)
    if node is None or node.op not in _PATH_OPS or depth > 20:
        return False
    data = [i for i in node.input if not i.startswith("^")]
    if node.op == "Pack":
        return bool(data) and all(_is_path(i, nodes, sources, depth + 1) for i in data)
    if node.op == "StringJoin":
        return bool(data) and _is_path(data[0], nodes, sources, depth + 1) and all(
            _is_suffix(i, nodes, depth + 1) for i in data[1:])
    return bool(data) and _is_path(data[0], nodes, sources, depth + 1)


def _is_suffix(tensor: str, nodes: dict, depth: int) -> bool:
    """A constant string (or a choice between constants) that cannot lead a path elsewhere: no `..`, not absolute."""
    node = nodes.get(_node_name(tensor))
    if node is None or depth > 20:
        return False
    if node.op == "Const":
        values = list(node.attr["value"].tensor.string_val)
        return bool(values) and all(b".." not in v and not v.startswith((b"/", b"\\")) and b"://" not in v
                                    for v in values)
    if node.op in ("Select", "SelectV2"):
        data = [i for i in node.input if not i.startswith("^")]
        return len(data) == 3 and all(_is_suffix(i, nodes, depth + 1) for i in data[1:])
    return node.op == "Identity" and bool(node.input) and _is_suffix(node.input[0], nodes, depth + 1)


def _prints_to_file(node) -> bool:
    stream = node.attr["output_stream"].s if "output_stream" in node.attr else b"stderr"
    return stream not in _CONSOLE_STREAMS


# ONNX domains whose ops onnxruntime implements itself, natively, as tensor math: the standard ops, the
# traditional-ML ops, and onnxruntime's own contrib ops (what its quantizers write: MatMulNBits, QLinear*, ...).
# Any other domain is a custom op, implemented by a library the runtime would have to load.
ONNX_DOMAINS = {"": "the standard ONNX ops", "ai.onnx": "the standard ONNX ops", "ai.onnx.ml": "traditional-ML ops",
                "com.microsoft": "onnxruntime's built-in contrib ops"}


def refused_onnx_ops(proto) -> list[str]:
    """The ops of an ONNX model (`proto`) from a custom domain (any but ONNX_DOMAINS), naming each op and the graph
    or function it is in; an op that is one of the model's own functions is not one, its body is checked instead."""
    local = {(f.domain, f.name): f for f in proto.functions}
    found: list[str] = []

    def visit(nodes, where: str, seen: frozenset) -> None:
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in local:
                if key not in seen:
                    visit(local[key].node, f"function {node.op_type}", seen | {key})
            elif node.domain not in ONNX_DOMAINS:
                entry = f"{where} runs the op {node.op_type} of the custom domain '{node.domain}'"
                if entry not in found:
                    found.append(entry)
            for attribute in node.attribute:
                for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    visit(graph.node, f"{where} (subgraph of {node.op_type} '{node.name}')", seen)

    visit(proto.graph.node, "the graph", frozenset())
    return found
