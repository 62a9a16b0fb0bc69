"""`int8_macs`: the share of a model's multiply-accumulates that its runtime runs in integer kernels.

    coverage = int8_macs("model_int8.tflite")   # {"int8_macs": 0.98, "macs": 1234567, ...}

A file can hold int8 tensors and still compute in float: TFLite's weight-only models dequantize int8
weights into float ops, and onnxruntime may run a QuantizeLinear/DequantizeLinear pair around a MatMul
as DequantizeLinear + a float Gemm. So the count reads the ops the runtime executes, not the file's dtypes:
- TFLite: each op of the flatbuffer (as LiteRT reads it), with its tensors' types and shapes. An op is
  integer when its input activations and its weights are integers, counted apart by activation width:
  int8 (`int8_macs`) or int16 (`int16_macs`: int16x8 kernels, which are not int8 ones); "hybrid"
  when its activations are float and its weights integer (dynamic-range quantization: the kernel
  quantizes the activations at run time); float otherwise (a DEQUANTIZE op before it included).
- ONNX: the graph onnxruntime builds after its optimizations, saved with `optimized_model_filepath`
  and run once at batch 1 for its tensor shapes. An op is integer when the node that does the MACs is
  an integer kernel (QLinearConv, QGemm, QLinearMatMul, ConvInteger, MatMulInteger...) on statically
  quantized activations; hybrid when it quantizes its float activations at run time (int8_dynamic's
  DynamicQuantizeMatMul, ConvInteger after DynamicQuantizeLinear; MatMulNBits at accuracy_level 4);
  float otherwise (Conv, Gemm, MatMul, FusedConv, FusedGemm, MatMulNBits at its default level).

MACs are those of one invocation at the model's input shape, a dynamic dimension counted as 1.
Ops inside control flow (TFLite WHILE bodies, ONNX If/Loop subgraphs) are not counted.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgepress.errors import EdgepressError, first_line

INTEGER, INT16, HYBRID, FLOAT = "integer", "int16", "hybrid", "float"  # INTEGER: int8 (or uint8) activations


def int8_macs(path: str | Path) -> dict[str, Any]:
    """The MACs of the .tflite or .onnx file at `path`, split by the kind of kernel that runs them.

    Returns `int8_macs` (MACs of integer kernels with 8-bit activations / all MACs, 0.0 for a model without MAC
    ops), `int16_macs` (the same share for 16-bit activations), `macs` (all), `integer_macs` (8-bit),
    `integer16_macs`, `hybrid_macs`, `float_macs`, `float_ops` (the names of the float MAC ops: TFLite
    output tensors, ONNX node names) and `ops`: one dict per MAC op (name, op, kind, macs).
    """
    path = Path(path)
    if not path.is_file():
        raise EdgepressError(f"int8_macs: model file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        ops = _tflite_ops(path)
    elif suffix == ".onnx":
        ops = _onnx_ops(path)
    else:
        raise EdgepressError(f"int8_macs: {path} is neither a .tflite nor an .onnx file.")
    return summarize(ops)


def summarize(ops: Iterable[dict]) -> dict[str, Any]:
    ops = list(ops)
    by_kind = {kind: sum(op["macs"] for op in ops if op["kind"] == kind) for kind in (INTEGER, INT16, HYBRID, FLOAT)}
    total = sum(by_kind.values())
    return {
        "int8_macs": by_kind[INTEGER] / total if total else 0.0,
        "int16_macs": by_kind[INT16] / total if total else 0.0,
        "macs": total,
        "integer_macs": by_kind[INTEGER],
        "integer16_macs": by_kind[INT16],
        "hybrid_macs": by_kind[HYBRID],
        "float_macs": by_kind[FLOAT],
        "float_ops": [op["name"] for op in ops if op["kind"] == FLOAT],
        "ops": ops,
    }


def manifest_fields(path: str | Path) -> dict[str, Any]:
    """What an artifact's manifest keeps of `int8_macs(path)` under `quantization` (shares rounded to 1e-4).

    A file whose MACs cannot be counted (an ONNX graph with unknown image sizes, which onnxruntime cannot run at
    the size 1 that counting takes for them) gets `int8_macs: null` and the reason, and its export goes on.
    """
    try:
        c = int8_macs(path)
    except Exception as e:  # onnxruntime and the TFLite interpreter raise their own types
        return {"int8_macs": None, "int8_macs_note": f"MACs not counted: {first_line(e)}"}
    total = c["macs"]
    return {
        "int8_macs": round(c["int8_macs"], 4),
        "int16_macs": round(c["int16_macs"], 4),
        "hybrid_macs": round(c["hybrid_macs"] / total, 4) if total else 0.0,
        "macs": total,
        "float_mac_ops": c["float_ops"],
    }


# --- TFLite -------------------------------------------------------------------------------------------------

_INT_ACTIVATIONS = ("int8", "uint8")  # int16: its own kind, INT16
_INT_WEIGHTS = ("int8", "uint8", "int4", "int16")
# op: (activation input, weight input). The weight of BATCH_MATMUL is its second operand, constant or not.
_TFLITE_MAC_OPS = {
    "CONV_2D": (0, 1), "DEPTHWISE_CONV_2D": (0, 1), "CONV_3D": (0, 1), "FULLY_CONNECTED": (0, 1),
    "BATCH_MATMUL": (0, 1), "TRANSPOSE_CONV": (2, 1), "UNIDIRECTIONAL_SEQUENCE_LSTM": (0, 2),
}
# UNIDIRECTIONAL_SEQUENCE_LSTM's weight inputs: input-to-gate (1-4), recurrent (5-8), projection (16).
_LSTM_WEIGHTS = (1, 2, 3, 4, 5, 6, 7, 8, 16)


def _tflite_ops(path: Path) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgepress.compat import quiet

    try:
        with quiet():
            # Without the default delegate (XNNPACK), so the op list is the file's own, never a DELEGATE node.
            interpreter = Interpreter(
                model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
    except (ValueError, RuntimeError) as e:
        raise EdgepressError(f"int8_macs: LiteRT could not read {path}: {first_line(e)}.") from None
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():  # public API has no op list; every LiteRT interpreter has this
        name = op["op_name"]
        if name not in _TFLITE_MAC_OPS:
            continue
        # An absent optional input (an LSTM's peepholes) has index -1.
        inputs = [tensors[i] if i >= 0 else None for i in op["inputs"]]
        macs = _tflite_macs(name, inputs, tensors[op["outputs"][0]])
        activation, weight = (inputs[i] if i < len(inputs) else None for i in _TFLITE_MAC_OPS[name])
        ops.append({"name": tensors[op["outputs"][0]]["name"], "op": name, "macs": macs,
                    "kind": _kind(_dtype(activation), _dtype(weight))})
    return ops


def _dtype(tensor) -> str:
    return np.dtype(tensor["dtype"]).name if tensor is not None else "float32"


def _kind(activation: str, weight: str) -> str:
    if weight in _INT_WEIGHTS:
        if activation == "int16":
            return INT16
        return INTEGER if activation in _INT_ACTIVATIONS else HYBRID
    return FLOAT


def _size(shape) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) if len(shape) else 1


def _tflite_macs(op: str, inputs: list, output) -> int:
    """MACs of one TFLite op from its tensors' shapes (`shape`: a dynamic dimension reads 1)."""
    out = [int(d) for d in output["shape"]]
    if op in ("CONV_2D", "CONV_3D"):  # filter (out, kh, kw, in / groups)
        return _size(out) * _size(inputs[1]["shape"][1:])
    if op == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, out)
        return _size(out) * _size(inputs[1]["shape"][1:3])
    if op == "FULLY_CONNECTED":  # weights (units, in)
        return _size(out) * int(inputs[1]["shape"][-1])
    if op == "BATCH_MATMUL":  # a (..., m, k) or its transpose; the output (..., m, n)
        a = inputs[0]["shape"]
        k = _size(a[-2:]) // max(1, out[-2]) if len(out) >= 2 else int(a[-1])
        return _size(out) * k
    if op == "TRANSPOSE_CONV":  # each input value is scattered through the (out, kh, kw, in) filter
        return _size(inputs[2]["shape"]) * _size(inputs[1]["shape"][:3])
    # UNIDIRECTIONAL_SEQUENCE_LSTM: every (batch, step) multiplies the input and state by all gate weights.
    x = inputs[0]["shape"]
    steps = _size(x) // max(1, int(x[-1]))
    return steps * sum(_size(inputs[i]["shape"]) for i in _LSTM_WEIGHTS if i < len(inputs) and inputs[i] is not None)


# --- ONNX ---------------------------------------------------------------------------------------------------

# op_type: (activation input, weight input, formula)
ONNX_MAC_OPS = {
    "Conv": (0, 1, "conv"), "FusedConv": (0, 1, "conv"), "ConvInteger": (0, 1, "conv"), "QLinearConv": (0, 3, "conv"),
    "ConvTranspose": (0, 1, "conv_transpose"),
    "MatMul": (0, 1, "matmul"), "FusedMatMul": (0, 1, "matmul"), "MatMulInteger": (0, 1, "matmul"),
    "QLinearMatMul": (0, 3, "matmul"), "MatMulIntegerToFloat": (0, 1, "matmul"),
    "DynamicQuantizeMatMul": (0, 1, "matmul"), "MatMulNBits": (0, 1, "nbits"),
    "Gemm": (0, 1, "gemm"), "FusedGemm": (0, 1, "gemm"), "QGemm": (0, 3, "gemm"),
    "LSTM": (0, 1, "rnn"), "GRU": (0, 1, "rnn"), "RNN": (0, 1, "rnn"), "DynamicQuantizeLSTM": (0, 1, "rnn"),
}
_ONNX_INTEGER = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat"}
_ONNX_HYBRID = {"DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}


def onnx_kind(node, producers: dict[str, Any]) -> str:
    """integer, hybrid or float for an ONNX MAC node; `producers` maps a tensor name to the node making it."""
    op = node.op_type
    if op in _ONNX_HYBRID:
        return HYBRID
    if op == "MatMulNBits":
        # accuracy_level 4 quantizes the activations to int8 at run time; below it the weights are
        # dequantized and multiplied in float.
        level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)
        return HYBRID if level == 4 else FLOAT
    if op in _ONNX_INTEGER:
        source = producers.get(node.input[0])
        return HYBRID if source is not None and source.op_type == "DynamicQuantizeLinear" else INTEGER
    return FLOAT


def optimized_graph(path: Path, out: Path, level: str = "ORT_ENABLE_EXTENDED") -> None:
    """Save the graph onnxruntime runs for the .onnx file at `path` to `out`, optimized at `level`.

    The runner's sessions use onnxruntime's default, ORT_ENABLE_ALL: ORT_ENABLE_EXTENDED (the fusions that
    turn QDQ pairs into QLinearConv, QGemm...; FusedConv, FusedGemm) plus layout transforms (NCHWc, NHWC)
    that change how tensors are laid out, not which kernels are integer. Their saved graph is specific to
    this CPU and pads channels to its vector width, so the MACs are counted on the EXTENDED graph
    (tests/deploy/test_coverage.py checks that both levels run the same kinds of kernel).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise EdgepressError(f"int8_macs: onnxruntime could not load {path}: {first_line(e)}.") from None


def _onnx_ops(path: Path) -> list[dict]:
    import onnx

    with tempfile.TemporaryDirectory() as work:
        optimized = Path(work) / "optimized.onnx"
        optimized_graph(path, optimized)
        model = onnx.load(str(optimized))
        shapes = _onnx_shapes(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    ops = []
    for node in model.graph.node:
        if node.op_type not in ONNX_MAC_OPS:
            continue
        activation, weight, formula = ONNX_MAC_OPS[node.op_type]
        x, w = shapes[node.input[activation]], shapes[node.input[weight]]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        y = _size(shapes[node.output[0]])
        if formula == "conv":  # weight (out, in / groups, k...)
            macs = y * _size(w[1:])
        elif formula == "conv_transpose":  # weight (in, out / groups, k...): each input value scattered
            macs = _size(x) * _size(w[1:])
        elif formula == "matmul":
            macs = y * int(x[-2] if attributes.get("transA") and len(x) > 1 else x[-1])
        elif formula == "gemm":
            macs = y * int(x[0] if attributes.get("transA") else x[-1])
        elif formula == "nbits":
            macs = y * int(attributes["K"])
        else:  # rnn: W (directions, gates * hidden, input), R (directions, gates * hidden, hidden)
            macs = _size(x) // max(1, int(x[-1])) * (_size(w) + _size(shapes[node.input[2]]))
        ops.append({"name": node.name or node.output[0], "op": node.op_type, "macs": int(macs),
                    "kind": onnx_kind(node, producers)})
    return ops


def _onnx_shapes(model) -> dict[str, list[int]]:
    """The shape of every tensor of `model`, from one run at batch 1 (zeros in; dynamic dimensions as 1).

    Shape inference cannot do it: it stops at onnxruntime's own fused ops (com.microsoft domain).
    """
    import onnx
    import onnxruntime as ort

    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    declared = {o.name for o in augmented.graph.output}
    for node in augmented.graph.node:
        for name in [*node.input, *node.output]:
            if name and name not in declared and name not in shapes:
                augmented.graph.output.append(onnx.ValueInfoProto(name=name))
                declared.add(name)
    options = ort.SessionOptions()
    # The graph is already the optimized one: run it as it is.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = _ORT_TYPES.get(i.type, "float32")
        feed[i.name] = np.zeros(shape, dtype)
    values = session.run(None, feed)
    shapes.update({o.name: list(v.shape) for o, v in zip(session.get_outputs(), values, strict=True)})
    shapes.update({name: list(v.shape) for name, v in feed.items()})
    return shapes


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
              "tensor(bool)": "bool"}
