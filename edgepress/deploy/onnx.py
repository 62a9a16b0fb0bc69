"""ONNX export: any model kind to an .onnx file (tf2onnx, torch.onnx, or the file itself), quantized by onnxruntime.

    artifact = export_onnx(model, "m_int8_static.onnx", "int8_static", calibration=x[:200], check_data=x_test[:200])

Precisions:
- fp32: the model's own conversion (`Source.to_onnx`: tf2onnx for Keras and SavedModels, torch.onnx for a PyTorch
  program, a copy of an .onnx model).
- fp16: float16 weights and compute, float32 input/output (for GPUs; CPUs gain nothing).
- int8_dynamic: int8 weights, activations quantized at run time (onnxruntime quantize_dynamic).
- int8_static: int8 weights and activations as QuantizeLinear/DequantizeLinear (QDQ) pairs,
  activation ranges calibrated on the recipe's data (onnxruntime quantize_static).
int4 weights (MatMulNBits) are edgepress.deploy.weight_only's.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgepress.artifact import Artifact
from edgepress.compat import quiet
from edgepress.deploy.check import calibration_inputs
from edgepress.deploy.layers import (
    FLOAT_OPS,
    all_layers,
    check_float_ops,
    enclosing_layers,
    float_op_nodes,
    layer_names,
    layer_of,
    node_layer,
    nodes_of,
    output_layers,
    scopes_suffixed,
    typical_magnitude,
)
from edgepress.deploy.registry import Exporter, ExportRequest, export, register
from edgepress.deploy.signature import signature
from edgepress.errors import EdgepressError, first_line
from edgepress.formats import artifact_filename, precision_names, weight_only_precisions

ONNX_PRECISIONS = precision_names("onnx")
OPSET = 17


def export_onnx(
    model,
    path: str | Path | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    check_data: np.ndarray | None = None,
    steps: Sequence[str] = (),
    float_layers: Sequence[str] = (),
    calibration_method: str = "minmax",
    per_channel: bool = True,
    quant_format: str = "qdq",
    activation_type: str = "uint8",
    weight_type: str = "int8",
    batch_size: int | None = None,
    block_size: int | None = None,
    float_ops: Sequence[str] = (),
) -> Artifact:
    """Convert `model` to ONNX at `path` in `precision`; check it against `model` on `check_data`.

    `model` is any Source (edgepress.models) or a Keras model. `calibration` (inputs from the recipe's data) is
    required for int8_static. The other keywords shape int8_static only (onnxruntime quantize_static):
    `float_layers` names Keras layers (or ONNX nodes) to leave in float (`nodes_to_exclude`); `float_ops` kinds of
    ops to leave in float (edgepress.deploy.layers.FLOAT_OPS): "layernorm" and "attention" of a Keras model, as the
    TFLite int8 export's, and "elementwise" of any model (only the matmuls' and convolutions' inputs int8);
    `calibration_method`
    is minmax, entropy or percentile; `per_channel` quantizes weights per output channel (else per tensor);
    `quant_format` is qdq (QuantizeLinear/DequantizeLinear pairs) or qoperator (QLinearConv, QLinearMatMul...);
    `activation_type` and `weight_type` are uint8 or int8. `block_size` (int4_weight) is the MatMulNBits block
    (default 32). `batch_size` fixes the input's batch dimension (default: dynamic; not for an .onnx model).
    `path` defaults to `edgepress.formats.artifact_filename` of the model's name, in the working directory.
    Writes the file and its manifest atomically and returns the Artifact.
    """
    from edgepress.models.source import wrap

    source = wrap(model)
    path = Path(path or artifact_filename(source.name, "onnx", precision, batch_size, block_size=block_size))
    static = dict(calibration_method=calibration_method, per_channel=per_channel, quant_format=quant_format,
                  activation_type=activation_type, weight_type=weight_type)
    return export(ExportRequest(source, path, "onnx", precision, calibration, check_data, tuple(steps), batch_size,
                                block_size=block_size, float_layers=tuple(float_layers), float_ops=tuple(float_ops),
                                onnx_static=static))


@register
class OnnxExport(Exporter):
    """The model's own ONNX conversion, then onnxruntime's float16 converter or quantizers."""

    format: ClassVar[str] = "onnx"
    precisions: ClassVar[tuple[str, ...]] = tuple(p for p in ONNX_PRECISIONS if p not in weight_only_precisions("onnx"))

    def takes(self, source) -> bool:
        return hasattr(source, "to_onnx")  # every kind that converts itself to an fp32 .onnx file

    def check(self, request: ExportRequest) -> None:
        if request.layout is not None or request.sparse:
            option = "layout" if request.layout is not None else "sparse"
            raise EdgepressError(f"{option} is a TFLite option; onnx {request.precision} keeps the model's own "
                                 f"input. Remove {option} from that export.")
        static = {**_STATIC_DEFAULTS, **request.onnx_static}
        _check_static_options(request.precision, request.float_layers, static)
        if request.float_ops:
            check_float_ops(request.source, request.float_ops, f"ONNX {request.precision}", "onnx",
                            request.precision)
            if getattr(request.source, "quantize_aware", False):
                raise EdgepressError(f"float_ops on onnx int8_static of '{request.source.name}': its int8 ranges were "
                                     "learned by qat and its file is not quantized again, so nothing would stay "
                                     "float. Remove float_ops from that export.")
        if request.precision == "int8_static":
            calibration_inputs(request.source, request.calibration, "ONNX int8_static")
        check_batch_size(request)

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        source, precision = request.source, request.precision
        static = {**_STATIC_DEFAULTS, **request.onnx_static}
        samples = calibration_inputs(source, request.calibration, "ONNX int8_static") if precision == "int8_static" \
            else None
        quantization: dict = {}
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / "fp32.onnx"
            with quiet():
                convert(source, fp32, request.batch_size)
                if precision == "fp32":
                    fp32.replace(out)
                elif precision == "int8_static" and getattr(source, "quantize_aware", False):
                    # tfmot's fake-quant nodes convert to QDQ pairs with the ranges QAT learned: quantizing the
                    # file again would calibrate over them.
                    fp32.replace(out)
                    quantization = {"weights": "int8", "activations": "int8 (ranges learned by qat)"}
                elif precision == "fp16":
                    _to_fp16(fp32, out)
                elif precision == "int8_dynamic":
                    from onnxruntime.quantization import QuantType, quantize_dynamic

                    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
                    quantization = {"weights": "int8", "activations": "dynamic uint8"}
                else:
                    quantization = _quantize_static(fp32, out, samples, Path(work), source, request.float_layers,
                                                    request.float_ops, **static)
        return quantization


def check_batch_size(request: ExportRequest) -> None:
    """Refuse a batch for a model that keeps its own input shape (an .onnx file, a program with a fixed batch)."""
    source = request.source
    if request.batch_size is not None and not source.takes_batch_size("onnx"):
        from edgepress.models.source import shape_text

        why = "is already ONNX and keeps" if source.kind == "onnx" else "was exported with a fixed batch: it has"
        raise EdgepressError(
            f"batch_size on onnx {request.precision}: {source.path} {why} its own input shape "
            f"{shape_text(source.input_shape)}. Remove batch_size from its ONNX exports."
        )


def convert(source, out: Path, batch_size: int | None = None) -> None:
    """The fp32 ONNX file of `source` at `out` (`Source.to_onnx`), its converter's failure as an EdgepressError."""
    try:
        source.to_onnx(out, batch_size, OPSET)
    except EdgepressError:
        raise
    except Exception as e:  # tf2onnx raises plain Exceptions for unsupported ops
        raise EdgepressError(
            f"tf2onnx could not convert '{source.name}' to ONNX (opset {OPSET}): {first_line(e)}. "
            "Check that its layers use ops tf2onnx supports."
        ) from None
    erfc_as_erf(out)
    model = getattr(source, "model", None)
    if hasattr(model, "layers") and not getattr(source, "quantize_aware", False):
        layer_norms_as_ops(out, model)


def erfc_as_erf(path: Path) -> int:
    """Rewrite each Erfc node of the .onnx file at `path` as 1 - Erf(x); return how many there were.

    TensorFlow's exact GELU is 0.5 * x * erfc(-x / sqrt(2)) (tf_keras's `gelu`), and tf2onnx writes the Erfc as it
    is, but ONNX has no Erfc operator: onnxruntime refuses the file. Erf is ONNX's, and erfc(x) = 1 - erf(x).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    found = [n for n in graph.node if n.op_type == "Erfc" and n.domain in ("", "ai.onnx")]
    if not found:
        return 0
    one = "edgepress_erfc_one"
    graph.initializer.append(helper.make_tensor(one, TensorProto.FLOAT, [], [1.0]))
    nodes = []
    for node in graph.node:
        if node in found:
            erf = f"{node.name or node.output[0]}_erf"
            nodes.append(helper.make_node("Erf", [node.input[0]], [erf], name=erf))
            nodes.append(helper.make_node("Sub", [one, erf], list(node.output), name=node.name))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(found)


def layer_norms_as_ops(path: Path, model) -> int:
    """Rewrite the ops of each LayerNormalization layer of the Keras `model` in the .onnx file at `path` as one ONNX
    LayerNormalization op (opset 17); return how many were rewritten.

    tf2onnx writes a LayerNorm as the arithmetic TensorFlow traced (a mean, a squared difference, a second mean,
    Add, Sqrt, Reciprocal, four Mul and three Add), which onnxruntime does not fuse. Run one by one at batch 1 they
    cost more than the one LayerNormalization kernel, and quantized they become QLinearAdd / QLinearMul ops between
    QuantizeLinear and DequantizeLinear nodes. A layer is rewritten when it normalizes the last axis and its ops
    (the graph's nodes of that layer, `node_layer`) read one tensor and make one; the export's check against the
    model then checks the rewrite too.
    """
    import onnx
    from onnx import helper, numpy_helper

    norms = {layer.name: layer for layer in all_layers(model) if type(layer).__name__ == "LayerNormalization"
             and _last_axis_norm(layer)}
    if not norms:
        return 0
    onnx_model = onnx.load(str(path))
    graph = onnx_model.graph
    names = [n.name for n in graph.node]
    if len(set(names)) != len(names) or "" in names:  # nodes are told apart by name below
        return 0
    owner = _owners(graph, model)
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    done = 0
    for name, layer in norms.items():
        mine = [n for n in graph.node if owner[n.name] == name]
        made = {o for n in mine for o in n.output}
        read = list(dict.fromkeys(i for n in mine for i in n.input if i and i not in made and i not in constants))
        others = {i for n in graph.node if owner[n.name] != name for i in n.input} | {o.name for o in graph.output}
        given = [o for n in mine for o in n.output if o in others]
        if len(read) != 1 or len(given) != 1:
            continue  # not the plain arithmetic of one LayerNorm: leave it as tf2onnx wrote it
        scope = next(n.name for n in mine if given[0] in n.output).rsplit("/", 1)[0]
        gamma, beta = _gamma_beta(layer)
        graph.initializer.extend([numpy_helper.from_array(gamma, f"{scope}/gamma"),
                                  numpy_helper.from_array(beta, f"{scope}/beta")])
        # At the place of its last op: its input is made before that, its output read after.
        at = max(i for i, n in enumerate(graph.node) if owner[n.name] == name)
        fused = helper.make_node("LayerNormalization", [read[0], f"{scope}/gamma", f"{scope}/beta"], given,
                                 name=f"{scope}/LayerNormalization", axis=-1, epsilon=float(layer.epsilon))
        graph.node.insert(at + 1, fused)
        for node in mine:
            graph.node.remove(node)
        owner[fused.name] = name
        done += 1
    if done:
        used = {i for n in graph.node for i in n.input}
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        onnx.checker.check_model(onnx_model)
        onnx.save(onnx_model, str(path))
    return done


def _last_axis_norm(layer) -> bool:
    """Whether a Keras LayerNormalization normalizes its input's last axis only, as ONNX's (axis=-1) does."""
    axes = list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    try:
        rank = len(layer.input.shape)
    except (AttributeError, ValueError):
        return False
    return not getattr(layer, "rms_scaling", False) and axes in ([-1], [rank - 1])


def _gamma_beta(layer) -> tuple[np.ndarray, np.ndarray]:
    """A LayerNormalization's scale and offset as float32 arrays (ones and zeros where it has none)."""
    width = int(layer.input.shape[-1])
    gamma = getattr(layer, "gamma", None) if getattr(layer, "scale", True) else None
    beta = getattr(layer, "beta", None) if getattr(layer, "center", True) else None
    return (np.ones(width, np.float32) if gamma is None else np.asarray(gamma.numpy(), np.float32),
            np.zeros(width, np.float32) if beta is None else np.asarray(beta.numpy(), np.float32))


def _to_fp16(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # keep_io_types: callers keep feeding and reading float32.
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))


def _quantize_static(
    fp32: Path, out: Path, samples: np.ndarray, work: Path, source, float_layers: Sequence[str] = (),
    float_ops: Sequence[str] = (), calibration_method: str = "minmax", per_channel: bool = True,
    quant_format: str = "qdq", activation_type: str = "uint8", weight_type: str = "int8",
) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime recommends shape inference and graph optimization before quantizing.
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # symbolic shapes are for transformers
    # Layer names become node names of the graph being quantized (the optimizer fuses and renames nodes).
    graph = onnx.load(str(prepared)).graph
    nodes, tensors = [n.name for n in graph.node], {n.name: list(n.output) for n in graph.node}
    excluded = nodes_of(float_layers, nodes, source.model, "ONNX int8_static float_layers",
                        tensors) if float_layers else []
    layered = [kind for kind in float_ops if FLOAT_OPS[kind] is not None]  # found by their Keras layers
    if layered:
        excluded += [node for node in float_op_nodes(layered, nodes, source.model, _owners(graph, source.model))
                     if node not in excluded]
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    # float_ops elementwise: only the MAC ops take quantized inputs, and they give float outputs (onnxruntime runs
    # them as MatMulIntegerToFloat...); every other op runs in float, with no requantizing QLinearAdd / QLinearMul.
    mac_only = dict(op_types_to_quantize=list(_MAC_OPS),
                    extra_options={"OpTypesToExcludeOutputQuantization": list(_MAC_OPS)}) \
        if "elementwise" in float_ops else {}
    # The histogram calibrators print their progress to stdout; send it where quiet() sends chatter.
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(
            str(prepared), str(out), _reader(samples, *_input_of(prepared)),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel, activation_type=types[activation_type], weight_type=types[weight_type],
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[calibration_method],
            nodes_to_exclude=excluded, **mac_only,
        )
    if excluded and quant_format == "qdq":
        _keep_float(out, excluded)
    quantization = {
        "calibration_samples": len(samples), "method": calibration_method, "format": _FORMATS[quant_format],
        "per_channel": per_channel, "activations": activation_type, "weights": weight_type,
    }
    if float_layers:
        quantization.update(float_layers=list(float_layers))
    if float_ops:
        quantization.update(float_ops=list(float_ops))
    if excluded:
        quantization.update(float_nodes=excluded)
    return quantization


def _owners(graph, model) -> dict[str, str | None]:
    """The Keras layer of each node of the ONNX `graph` (`node_layer`), an unnamed node between the ops of one layer
    (an attention's einsum matmuls) given that layer (`enclosing_layers`)."""
    layers, outputs, suffixed = layer_names(model), output_layers(model), scopes_suffixed(model)
    owner = {n.name: node_layer(n.name, n.output, layers, outputs, suffixed) for n in graph.node}
    return enclosing_layers(owner, {n.name: list(n.input) for n in graph.node},
                            {n.name: list(n.output) for n in graph.node})


# The ONNX ops with weights that multiply and accumulate: what `float_ops: [elementwise]` leaves quantized.
_MAC_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
# The ops onnxruntime's WeightBiasQuantization optimizer quantizes at load when their input comes from a
# DequantizeLinear and their weight is a float initializer: what a QDQ node left out of quantization looks like.
_QUANTIZED_AT_LOAD = {"Conv", "ConvTranspose", "Gemm"}


def _keep_float(path: Path, excluded: Sequence[str]) -> int:
    """Keep the float layers of the QDQ model at `path` float when onnxruntime loads it; return how many inputs
    were rewritten.

    A Conv, ConvTranspose or Gemm left out of quantization (`nodes_to_exclude`) whose input is dequantized (its
    producer is quantized) is quantized anyway by onnxruntime at load (WeightBiasQuantization: int8 per-tensor
    weights, then fused into QLinearConv / QGemm), so a float layer would run int8. The DequantizeLinear feeding it
    is written out as its arithmetic, (Cast(q) - zero_point) * scale: the same float values, in ops that optimizer
    does not match.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    before: dict[str, list] = {}  # excluded node -> the nodes that now compute its input
    for node in graph.node:
        dq = producers.get(node.input[0]) if node.input else None
        if node.name not in set(excluded) or node.op_type not in _QUANTIZED_AT_LOAD or dq is None \
                or dq.op_type != "DequantizeLinear" or numpy_helper.to_array(initializers[dq.input[1]]).size != 1:
            continue
        base = f"{node.name}_float_input"
        zero_point = dq.input[2] if len(dq.input) > 2 else ""
        zero = numpy_helper.to_array(initializers[zero_point]) if zero_point in initializers else np.zeros(())
        graph.initializer.append(numpy_helper.from_array(zero.astype(np.float32), f"{base}_zero_point"))
        before[node.name] = [
            helper.make_node("Cast", [dq.input[0]], [f"{base}_cast"], name=f"{base}_cast", to=TensorProto.FLOAT),
            helper.make_node("Sub", [f"{base}_cast", f"{base}_zero_point"], [f"{base}_centered"],
                             name=f"{base}_centered"),
            helper.make_node("Mul", [f"{base}_centered", dq.input[1]], [base], name=base),
        ]
        node.input[0] = base
    if before:
        order = list(graph.node)
        read = {name for node in order for name in node.input} | {o.name for o in graph.output}
        del graph.node[:]
        for node in order:  # each new chain right before the node it feeds: the graph stays in topological order
            if node.op_type == "DequantizeLinear" and node.output[0] not in read:
                continue  # the DequantizeLinear only the float layer read
            graph.node.extend(before.get(node.name, []))
            graph.node.append(node)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return len(before)


_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
_STATIC_CHOICES = {
    "calibration_method": ("minmax", "entropy", "percentile"),
    "per_channel": (True, False),
    "quant_format": tuple(_FORMATS),
    "activation_type": ("uint8", "int8"),
    "weight_type": ("uint8", "int8"),
}
_STATIC_DEFAULTS = {"calibration_method": "minmax", "per_channel": True, "quant_format": "qdq",
                    "activation_type": "uint8", "weight_type": "int8"}


def _check_static_options(precision: str, float_layers: Sequence[str], static: dict) -> None:
    """Refuse int8_static options with unknown values, or given for another precision."""
    for name, value in static.items():
        if value not in _STATIC_CHOICES[name]:
            raise EdgepressError(
                f"Unknown ONNX {name} {value!r}. Use one of: {', '.join(map(str, _STATIC_CHOICES[name]))}."
            )
    changed = [name for name, value in static.items() if value != _STATIC_DEFAULTS[name]]
    changed += ["float_layers"] if float_layers else []
    if changed and precision != "int8_static":
        raise EdgepressError(
            f"{', '.join(changed)}: these shape ONNX static quantization only; "
            f"use precision int8_static, not '{precision}'."
        )


def _input_of(path: Path) -> tuple[str, str, int]:
    """The name, dtype and batch (1 when dynamic) of the (single) input of an .onnx file."""
    (first, *_), _ = signature(path)
    return first.name, first.dtype, max(1, first.shape[0] if first.shape else 1)


def _reader(samples: np.ndarray, input_name: str = "input", dtype: str = "float32", batch: int = 1):
    """An onnxruntime CalibrationDataReader that feeds `samples` one at a time as the input named `input_name`.

    A model with a fixed batch gets each sample repeated to that batch.
    """
    from onnxruntime.quantization import CalibrationDataReader

    samples = samples.astype(dtype, copy=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.repeat(samples[i : i + 1], batch, axis=0) for i in range(len(samples)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def layer_errors(source, float_path: str | Path, qdq_path: str | Path, calibration: np.ndarray) -> list[dict]:
    """The layer-wise int8 error of a QDQ model against its float model (the Keras model `source`), from onnxruntime's
    QDQ debugging tools.

    Both files run on the calibration samples with every intermediate tensor saved (qdq_loss_debug),
    and each activation the QDQ model quantizes is compared with the same tensor of the float model.
    Returns one dict per quantized activation: `layer` (the Keras layer, or None), `node` (the tensor),
    `error` (the RMS difference in units of a typical activation: rmse / median |nonzero float value|),
    `relative_error` (||float - int8|| / ||float||), `rmse`, `max_abs_error`, all over the samples and
    including the error of the layers before, and `own_error`, the `error` of this tensor's own QDQ pair.
    """
    import math

    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    samples = calibration_inputs(source, calibration, "ONNX layer-wise error analysis")
    activations = {}
    with tempfile.TemporaryDirectory() as work, quiet():
        for kind, path in (("float", float_path), ("qdq", qdq_path)):
            augmented = Path(work) / f"{kind}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            activations[kind] = collect_activations(str(augmented), _reader(samples, *_input_of(Path(path))))
    matched = create_activation_matching(activations["qdq"], activations["float"])

    def flat(arrays) -> np.ndarray:
        return np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64)

    def ratio(error: float, reference: float) -> float:
        return error / reference if reference > 0 else (0.0 if error == 0 else math.inf)

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.square(x))))

    import onnx

    layers, outputs = layer_names(source.model), output_layers(source.model)
    suffixed = scopes_suffixed(source.model)
    # A tensor is named after the layer of the node that makes it (`node_layer`), the rule float_layers is read by.
    producer = {t: n for n in onnx.load(str(qdq_path)).graph.node for t in n.output}
    errors = []
    for tensor, match in matched.items():
        if "float" not in match:  # a tensor the float model does not have (made by the quantizer)
            continue
        reference, quantized, before = flat(match["float"]), flat(match["post_qdq"]), flat(match["pre_qdq"])
        typical = typical_magnitude(reference)
        node = producer.get(tensor)
        errors.append({
            "layer": node_layer(node.name, node.output, layers, outputs, suffixed) if node is not None else
            layer_of(tensor, layers, outputs, suffixed),
            "node": tensor,
            "op": node.op_type if node is not None else None,
            "op_node": node.name if node is not None else None,  # what float_layers names to keep this op float
            "error": ratio(rms(reference - quantized), typical),
            "relative_error": ratio(rms(reference - quantized), rms(reference)),
            "rmse": rms(reference - quantized),
            "max_abs_error": float(np.max(np.abs(reference - quantized))),
            "own_error": ratio(rms(before - quantized), typical_magnitude(before)),
        })
    return errors
