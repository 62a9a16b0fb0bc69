"""One small model per operator of a .tflite file: how the runner times each op, since LiteRT's Python API has no op
timer (LiteRT 2.3: neither the Interpreter nor the CompiledModel exposes its profiler).

    ops = op_models(Path("m_int8.tflite"), Path("ops/"))   # [{index, op, name, prep, file, why}, ...]

Each file holds one operator of the model's main graph with the tensors it reads and writes: its constant inputs
(weights) with their data and quantization, its activations as the file's inputs, its outputs as its outputs. An
input computed from constants only (a DEQUANTIZE of int8 or float16 weights, a DENSIFY of sparse ones) comes with
the ops that compute it, as in the model, where a delegate may fold them into the op: they are timed with their
consumer, not alone (`prep` names them). So does an input computed from tensor shapes (a SHAPE, then GATHER, PACK or
CONCATENATION of its dimensions: a RESHAPE's target in a model with a dynamic batch), since a random value there
would be no shape at all; such ops are timed with each op that reads what they compute.

Every tensor has the shape it has when the whole model runs at batch 1 (one call of it on the host, on the builtin
kernels): a model with a dynamic batch stores a placeholder shape for tensors whose size is only known then (a
RESHAPE's output is stored as [1, 1]), and an op cut out with that shape is not the op the model runs (XNNPACK
refuses a FULLY_CONNECTED whose input has 1 feature against weights of 8: "failed to reshape").

The runner times each file alone with the device's delegate and records whether the delegate took it (a DELEGATE
node in its execution plan): the op's time as the device runs it, plus one invocation's fixed cost
(edgepress/deploy/runner.py, profile_tflite). An op that calls other graphs (WHILE, IF, CALL_ONCE) is not cut out;
its row says so. This runs on the host (it needs LiteRT's flatbuffer tools); the device only times the files.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from edgepress.errors import EdgepressError, first_line

# Builtin options that name other subgraphs: an op with them cannot be timed alone.
_CONTROL_FLOW = ("WHILE", "IF", "CALL_ONCE", "STABLEHLO_WHILE", "STABLEHLO_CASE", "STABLEHLO_COMPOSITE")


def op_models(path: Path, out_dir: Path) -> list[dict[str, Any]]:
    """Write one .tflite file per operator of the model at `path` into `out_dir`; return one row per operator, in
    execution order: index, op (its builtin name), name (its first output tensor's), prep (the weight-preparing ops
    that come with it), in and out (the element types of its first activation input and its output), file (or
    None), why (None, or why it was not cut out)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model(str(path))
    except Exception as e:  # a truncated or foreign file: flatbuffers raises plain errors
        raise EdgepressError(f"Cannot read {path} as a TFLite model to profile it: {first_line(e)}.") from None
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    kinds = [names.get(flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex]),
                       "CUSTOM") for op in graph.operators]
    prep, made_by, constants = _constant_prep(model, graph, kinds)
    shapes = {} if any(kind in _CONTROL_FLOW for kind in kinds) else _shapes_at_batch_1(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, op in enumerate(graph.operators):
        if index in prep:
            continue  # computed from constants only: timed with the op that reads it
        name = _tensor_name(graph.tensors[op.outputs[0]]) if len(op.outputs) else f"op{index}"
        group = sorted(_producers(op, made_by, prep, graph)) + [index]
        activations = [t for t in op.inputs if t >= 0 and t not in constants]
        row = {"index": index, "op": kinds[index], "name": name, "prep": [kinds[i] for i in group[:-1]],
               "in": _dtype(schema, graph.tensors[activations[0]]) if activations else None,
               "out": _dtype(schema, graph.tensors[op.outputs[0]]) if len(op.outputs) else None,
               "file": None, "why": None}
        if kinds[index] in _CONTROL_FLOW:
            row["why"] = f"{kinds[index]} runs other subgraphs; it is not timed alone"
        else:
            file = out_dir / f"op{index:04d}.tflite"
            ops = [graph.operators[i] for i in group]
            file.write_bytes(flatbuffer_utils.convert_object_to_bytearray(_alone(schema, model, graph, ops, shapes)))
            row["file"] = file.name
        rows.append(row)
    return rows


def _constant_prep(model, graph, kinds: list[str]) -> tuple[set[int], dict[int, int], set[int]]:
    """The ops whose every input is constant or made from constants and shapes (weights prepared at run time, shape
    arithmetic after a SHAPE), the op that makes each tensor, and the tensors that are constant or made so."""
    constant = {i for i, t in enumerate(graph.tensors) if t.buffer and model.buffers[t.buffer].data is not None
                and len(model.buffers[t.buffer].data)}
    made_by, prep = {}, set()
    for index, op in enumerate(graph.operators):
        for t in op.outputs:
            made_by[t] = index
        inputs = [t for t in op.inputs if t >= 0]
        if kinds[index] == "SHAPE" or (inputs and all(t in constant for t in inputs)):
            prep.add(index)
            constant.update(op.outputs)
    return prep, made_by, constant


def _shapes_at_batch_1(path: Path) -> dict[int, list[int]]:
    """The shape of each tensor of the main graph after one call of the model at batch 1 (every dynamic dimension of
    its inputs set to 1) on the builtin kernels; {} when the model cannot be called so on the host (its ops then keep
    their stored shapes). Only for a model without control flow, whose call always ends."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgepress.limits import memory_cap

    try:
        # A file is data: its call in edgepress's own process allocates no more than a model load may.
        with memory_cap(f"The TFLite model {path} (one call at batch 1, to profile its ops)"):
            interpreter = Interpreter(model_path=str(path),
                                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            for detail in interpreter.get_input_details():
                signature = detail.get("shape_signature", detail["shape"])
                interpreter.resize_tensor_input(detail["index"], [int(d) if d > 0 else 1 for d in signature])
            interpreter.allocate_tensors()
            for detail in interpreter.get_input_details():  # zeros: a valid token id, a valid int8 or float input
                interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
            return {t["index"]: [int(d) for d in t["shape"]] for t in interpreter.get_tensor_details()}
    except (ValueError, RuntimeError, EdgepressError):  # a kernel this LiteRT lacks, no shape at batch 1, too big
        return {}


def _producers(op, made_by: dict[int, int], prep: set[int], graph) -> set[int]:
    """The prep ops (see _constant_prep) that `op`'s inputs come from, through other prep ops."""
    found, todo = set(), [t for t in op.inputs if t >= 0]
    while todo:
        maker = made_by.get(todo.pop())
        if maker in prep and maker not in found:
            found.add(maker)
            todo += [t for t in graph.operators[maker].inputs if t >= 0]
    return found


def _alone(schema, model, graph, ops: list, shapes: dict[int, list[int]]):
    """A ModelT holding `ops` alone, in order: their tensors renumbered, the constant ones with their buffers, each
    with its shape in `shapes` (fixed: the shapes of a call at batch 1) where known; its inputs are what the ops read
    and no op of theirs makes, its outputs what the last op writes."""
    used = list(dict.fromkeys(t for op in ops for t in [*op.inputs, *op.outputs, *(op.intermediates or [])] if t >= 0))
    renumber = {old: new for new, old in enumerate(used)}
    buffers = [schema.BufferT()]  # buffer 0 is the empty one, by the schema's convention
    tensors = []
    for old in used:
        tensor = copy.copy(graph.tensors[old])
        if old in shapes:
            tensor.shape, tensor.shapeSignature = list(shapes[old]), None
        source = model.buffers[tensor.buffer] if tensor.buffer else None
        if source is not None and source.data is not None and len(source.data):
            buffers.append(source)
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
        tensors.append(tensor)
    made = {t for op in ops for t in op.outputs}
    copies = []
    for op in ops:
        alone = copy.copy(op)
        alone.inputs = [renumber[t] if t >= 0 else -1 for t in op.inputs]
        alone.outputs = [renumber[t] for t in op.outputs]
        alone.intermediates = [renumber[t] for t in (op.intermediates or [])] or None
        copies.append(alone)
    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.operators = copies
    subgraph.inputs = list(dict.fromkeys(
        renumber[t] for op in ops for t in op.inputs
        if t >= 0 and t not in made and not tensors[renumber[t]].buffer and not tensors[renumber[t]].isVariable))
    subgraph.outputs = list(copies[-1].outputs)
    subgraph.name = "op"
    result = schema.ModelT()
    result.version = model.version
    result.operatorCodes = model.operatorCodes
    result.subgraphs = [subgraph]
    result.buffers = buffers
    result.description = "one operator, cut out by edgepress to time it"
    return result


def _dtype(schema, tensor) -> str:
    """A tensor's element type as numpy names it ("int8", "float32")."""
    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return {"float32": "float32", "float16": "float16"}.get(names.get(tensor.type, "?"), names.get(tensor.type, "?"))


def _tensor_name(tensor) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)
