"""TFLite export with the TensorFlow Lite converter: a Keras (3 or 2) model or a plain SavedModel to a .tflite file.

    artifact = export_tflite(model, "m_int8.tflite", precision="int8", calibration=x[:200], check_data=x_test[:200])

Precisions, as the TFLite converter names them:
- fp32: no optimization.
- fp16: float16 weights (dequantized to float32 at load on CPU; GPU delegates run them natively).
- dynamic: dynamic-range quantization, int8 weights, float activations; no calibration data.
- int8: full-integer quantization, int8 weights, activations, input and output; calibrated.
- int16x8: int16 activations, int8 weights (more accurate than int8); calibrated, float input/output.
A PyTorch program goes to TFLite through litert-torch (edgepress.deploy.torch_tflite), weight-only precisions
through LiteRT's quantizer (edgepress.deploy.weight_only): each its own exporter of the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgepress.artifact import Artifact
from edgepress.compat import quiet
from edgepress.deploy.check import calibration_inputs
from edgepress.deploy.layers import (
    check_float_ops,
    float_op_nodes,
    layer_names,
    layer_of,
    nodes_of,
    output_layers,
    scopes_suffixed,
    typical_magnitude,
)
from edgepress.deploy.registry import Exporter, ExportRequest, export, register
from edgepress.errors import EdgepressError, first_line
from edgepress.formats import (
    artifact_filename,
    is_calibrated,
    precision_names,
    sparse_precisions,
    weight_only_precisions,
)

TFLITE_PRECISIONS = precision_names("tflite")
CALIBRATED = tuple(p for p in TFLITE_PRECISIONS if is_calibrated("tflite", p))
# Precisions whose weights can be stored as sparse tensors (`sparse=True`). Measured with LiteRT 2.3: sparse
# dynamic and int8 files are larger than the dense ones, and its XNNPACK delegate fails to prepare them.
SPARSE_PRECISIONS = sparse_precisions("tflite")


def export_tflite(
    model,
    path: str | Path | None = None,
    precision: str = "fp32",
    calibration: np.ndarray | None = None,
    check_data: np.ndarray | None = None,
    steps: Sequence[str] = (),
    float_layers: Sequence[str] = (),
    sparse: bool = False,
    batch_size: int | None = None,
    layout: str | None = None,
    block_size: int | None = None,
    float_ops: Sequence[str] = (),
) -> Artifact:
    """Convert `model` to `path` at `precision`; check it against `model` on `check_data`.

    `model` is any Source (edgepress.models) or a Keras model. `calibration` (inputs from the recipe's data) is
    required for int8 and int16x8. `float_layers` (int8 only) names Keras layers (or TFLite op output tensors) to
    leave in float32: they go on the deny-list of the converter's quantization debugger, everything else is int8
    as usual. `float_ops` (int8 only) keeps kinds of ops in float the same way: "layernorm" (every
    LayerNormalization), "attention" (each MultiHeadAttention's score and context matmuls, softmax and the reshapes
    between; its projections stay int8): XNNPACK runs none of them in int8 (LayerNorm's SQUARED_DIFFERENCE and
    RSQRT, SOFTMAX, a BATCH_MATMUL of two activations with zero points), so in an int8 file they run on LiteRT's
    builtin kernels: the int8 file 2.7x slower than the fp32 file on a small ViT (benchmarks/RESULTS.md, "int8 speed").
    `sparse` (fp32, fp16) stores weights that are mostly zeros (pruned, e.g. 2:4) as sparse tensors with
    DENSIFY ops (the converter's EXPERIMENTAL_SPARSITY): smaller files, and XNNPACK can run some architectures
    sparsely; the manifest counts the sparse tensors. `block_size` (int4_weight) quantizes Dense weights in blocks
    of that many (default: per channel). `batch_size` fixes the input's batch dimension (default: dynamic).
    Recurrent layers need it: the converter turns a Keras LSTM into its fused UNIDIRECTIONAL_SEQUENCE_LSTM op, and
    a GRU into a WHILE loop, only when the batch and sequence length are static. `layout="NHWC"` gives a PyTorch
    program's image input channels last. `path` defaults to `edgepress.formats.artifact_filename` of the model's
    name, in the working directory. Writes the file and its manifest atomically and returns the Artifact.
    """
    from edgepress.models.source import wrap

    source = wrap(model)
    path = Path(path or artifact_filename(source.name, "tflite", precision, batch_size, sparse, layout=layout,
                                          block_size=block_size))
    return export(ExportRequest(source, path, "tflite", precision, calibration, check_data, tuple(steps), batch_size,
                                sparse, layout, block_size, tuple(float_layers), float_ops=tuple(float_ops)))


@register
class TfliteConverter(Exporter):
    """The TFLite converter, on a concrete function of the model (see KerasModel.tflite_converter)."""

    format: ClassVar[str] = "tflite"
    precisions: ClassVar[tuple[str, ...]] = tuple(p for p in TFLITE_PRECISIONS
                                                  if p not in weight_only_precisions("tflite"))

    def takes(self, source) -> bool:
        return hasattr(source, "tflite_converter")  # TensorFlow models: a Keras model, a SavedModel

    def check(self, request: ExportRequest) -> None:
        precision = request.precision
        if request.float_layers and precision != "int8":
            raise EdgepressError(
                f"float_layers keeps layers of a full-integer model in float; it needs precision int8, not "
                f"'{precision}'."
            )
        if request.float_ops:
            check_float_ops(request.source, request.float_ops, f"TFLite {precision}", "tflite", precision)
        if request.sparse and precision not in SPARSE_PRECISIONS:
            raise EdgepressError(
                f"Sparse TFLite export works at precision {' or '.join(SPARSE_PRECISIONS)}, not '{precision}': "
                f"sparse {precision} files are larger than dense ones and LiteRT's XNNPACK delegate cannot load them."
            )
        if request.layout is not None:
            raise EdgepressError(
                f"layout {request.layout} on the TFLite export of {request.source.title} '{request.source.name}': "
                "layout chooses the image layout of TFLite files from a PyTorch model (NCHW or NHWC); this model is "
                "not one, and its files keep its own layout. Remove layout from its exports."
            )
        if request.batch_size is not None and request.batch_size < 1:
            raise EdgepressError(f"batch_size must be 1 or more (or None for a dynamic batch), got "
                                 f"{request.batch_size}.")
        looping = _recurrent_layers(request.source.model) if hasattr(request.source, "model") else []
        if looping and request.batch_size is None:  # the converter's MLIR fails on a TensorList otherwise
            raise EdgepressError(
                f"TFLite {precision} export of '{request.source.name}' needs `batch_size: 1`: "
                f"{', '.join(f'{r.name!r} ({type(r).__name__})' for r in looping)} loops over time, which TFLite "
                "converts only with a fixed batch size. Set `batch_size: 1` on this export "
                "(export_tflite(..., batch_size=1))."
            )
        if precision in CALIBRATED:
            calibration_inputs(request.source, request.calibration, f"TFLite {precision}")
            check_calibratable(request.source, precision, request.batch_size)

    def write(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        from edgepress.compat import tensorflow

        tf = tensorflow()
        source, precision, batch_size = request.source, request.precision, request.batch_size
        converter, quantization = _converter(tf, source, precision, request.calibration, batch_size)
        if request.sparse:
            converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        try:
            with quiet():
                if request.float_layers or request.float_ops:
                    samples = calibration_inputs(source, request.calibration, "TFLite int8")
                    data, quantization["float_nodes"] = _keep_float(tf, converter, source, samples,
                                                                    request.float_layers, request.float_ops)
                    if request.float_layers:
                        quantization["float_layers"] = list(request.float_layers)
                    if request.float_ops:
                        quantization["float_ops"] = list(request.float_ops)
                elif precision == "int16x8":
                    samples = calibration_inputs(source, request.calibration, "TFLite int16x8")
                    data, facts = _convert_16x8(converter, lambda: source.tflite_converter(batch_size), samples,
                                                source.layout, _not_for_16x8(source))
                    quantization.update(facts)
                else:
                    data = converter.convert()
        except EdgepressError:
            raise
        except Exception as e:  # the converter raises many types, with MLIR diagnostics
            hint = "Try another precision, or check that every layer is a TFLite builtin op."
            if "TensorList" in str(e) and batch_size is None:
                # The MLIR error of a recurrent layer (LSTM, GRU, RNN) converted with a dynamic batch.
                hint = ("The model loops over time (an LSTM, GRU or RNN layer), which TFLite converts only with a "
                        "fixed batch size: set `batch_size: 1` on this export (export_tflite(..., batch_size=1)).")
            raise EdgepressError(
                f"The TFLite converter could not make a {precision} model of '{source.name}': {first_line(e)}. {hint}"
            ) from None
        if request.sparse:
            quantization.update(sparse=True, sparse_tensors=_sparse_tensors(data))
        out.write_bytes(data)
        return quantization


def _sparse_tensors(data: bytes) -> int:
    """How many tensors of a .tflite file the converter stored sparse (it only does so for mostly-zero weights)."""
    from ai_edge_litert.interpreter import Interpreter

    return sum(1 for t in Interpreter(model_content=data).get_tensor_details() if t.get("sparsity_parameters"))


def check_calibratable(source, precision: str, batch_size: int | None = None) -> None:
    """Refuse a calibrated export (int8, int16x8) of a model whose TFLite graph loops over time.

    A Keras GRU or SimpleRNN (unless unroll=True) becomes a WHILE loop in TFLite, and the converter's
    calibrator crashes the whole process on WHILE loops (a segmentation fault in TensorFlow 2.21), so
    no error could be reported once it starts. Keras layers are checked by type; a SavedModel is
    converted at fp32 first and its ops are checked.
    """
    if not hasattr(source, "model"):  # a graph: its ops tell, not its layers
        from ai_edge_litert.interpreter import Interpreter

        try:
            with quiet():
                plain = source.tflite_converter(batch_size).convert()
        except Exception:  # the export itself reports conversion errors, with their hint
            return
        ops = {op["op_name"] for op in Interpreter(model_content=plain)._get_ops_details()}
        loops = [f"'{source.name}'"] if "WHILE" in ops else []
    else:
        loops = [f"'{layer.name}' ({type(layer).__name__})" for layer in _looping_layers(source.model)]
    if loops:
        raise EdgepressError(
            f"TFLite {precision} export of '{source.name}' is refused: {', '.join(loops)} becomes a WHILE loop in "
            "TFLite, and the converter's calibration crashes on WHILE loops (TensorFlow 2.21). Export it at "
            "precision dynamic or fp16 (no calibration), or build the layer with unroll=True (the steps written out "
            "one by one, which calibrate), or use an LSTM (TFLite's fused LSTM op calibrates)."
        )


def _recurrent_layers(model, lstm: bool = True) -> list:
    """The Keras recurrent layers (LSTM, GRU, RNN; Bidirectional ones) that are not unrolled; `lstm` False: less
    the LSTMs."""
    from edgepress.compat import keras_of

    layers = keras_of(model).layers
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):  # a nested model
            found += _recurrent_layers(layer, lstm)
            continue
        inner = [layer.forward_layer, layer.backward_layer] if isinstance(layer, layers.Bidirectional) else [layer]
        if any(isinstance(r, layers.RNN) and not r.unroll and (lstm or not isinstance(r, layers.LSTM)) for r in inner):
            found.append(layer)
    return found


def _looping_layers(model) -> list:
    """The Keras recurrent layers that TFLite turns into a WHILE loop: every RNN but LSTM, unless unrolled."""
    return _recurrent_layers(model, lstm=False)


def _converter(tf, source, precision: str, calibration: np.ndarray | None, batch_size: int | None = None):
    """A TFLiteConverter set up for `precision`, and the quantization facts for the manifest."""
    converter = source.tflite_converter(batch_size)
    quantization: dict = {}
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision in CALIBRATED:
        samples = calibration_inputs(source, calibration, f"TFLite {precision}").astype(source.input_dtype)
        # One sample per step, repeated to the fixed batch if there is one.
        batch = batch_size or 1
        converter.representative_dataset = lambda: ([np.repeat(s[None], batch, axis=0)] for s in samples)
        quantization["calibration_samples"] = len(samples)
    if precision == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if precision == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    return converter, quantization


# Layers the converter's own 16x8 mode cannot take: it refuses their NEG (softmax, Keras 3's exact GELU), quantizes
# their LayerNorm's SQUARED_DIFFERENCE into a file LiteRT cannot run, or aborts the process while calibrating
# (tf_keras's exact GELU, an Erfc: TensorFlow 2.21).
NOT_FOR_CONVERTER_16X8 = ("MultiHeadAttention", "LayerNormalization")


def _not_for_16x8(source) -> list[str]:
    """The layers of `source` that send its int16x8 export to LiteRT's quantizer instead of the converter."""
    model = getattr(source, "model", None)
    layers = getattr(model, "layers", None) or []
    return [f"'{layer.name}' ({type(layer).__name__})" for layer in layers
            if type(layer).__name__ in NOT_FOR_CONVERTER_16X8]


def _convert_16x8(converter, float_converter, samples: np.ndarray, layout: str | None, avoid: list[str],
                  ) -> tuple[bytes, dict]:
    """The int16x8 model, and facts for the manifest when it was made another way than by `converter`.

    A model with layers the converter's 16x8 mode cannot take (`avoid`, NOT_FOR_CONVERTER_16X8), or one whose ops it
    refuses, is converted in float (`float_converter()`) and quantized by LiteRT's quantizer
    (edgepress.deploy.static_16x8), which leaves ops it has no 16x8 kernel for in float."""
    import re
    import tempfile

    from edgepress.deploy.static_16x8 import static_16x8

    reason = {"converter_16x8_avoided_for": avoid} if avoid else None
    if reason is None:
        try:
            return converter.convert(), {}
        except Exception as e:
            missing = re.findall(r"16x8-bit not yet supported for op: '(\w+)'", str(e))
            if missing:
                reason = {"converter_16x8_lacks": sorted(set(missing))}
            elif "Max and min for dynamic tensors" in str(e):  # an integer input (token ids) it tried to calibrate
                reason = {"converter_16x8_failed": first_line(e)}
            else:
                raise
    with tempfile.TemporaryDirectory() as work:
        fp32, out = Path(work) / "fp32.tflite", Path(work) / "int16x8.tflite"
        fp32.write_bytes(float_converter().convert())
        facts = static_16x8(fp32, out, samples, layout, layout)
        return out.read_bytes(), {**facts, **reason}


def _keep_float(tf, converter, source, samples: np.ndarray, float_layers: Sequence[str],
                float_ops: Sequence[str] = ()) -> tuple[bytes, list[str]]:
    """A full-integer model with the ops of `float_layers` and of the kinds `float_ops` left in float, and the ops'
    output tensor names.

    The quantization debugger calibrates once, then quantizes with its deny-list (`denylisted_nodes`);
    fully_quantize keeps int8 input and output, like the plain int8 export.
    """
    options = tf.lite.experimental.QuantizationDebugOptions
    # The debugger's own run is only needed for the op names, so one sample is enough.
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: [[samples[:1]]], debug_options=options(fully_quantize=True)
    )
    quantized = [row["tensor_name"] for row in _layer_table(debugger, debugger.calibrated_model)]
    nodes = nodes_of(float_layers, quantized, source.model, "TFLite int8 float_layers") if float_layers else []
    nodes += [node for node in float_op_nodes(float_ops, quantized, source.model) if node not in nodes]
    if set(nodes) == set(quantized):
        raise EdgepressError(
            f"float_layers / float_ops {', '.join([*float_layers, *float_ops])} would leave every quantized op of "
            f"'{source.name}' in float; "
            "that is the fp32 export. Keep fewer layers in float, or export precision fp32."
        )
    debugger.options = options(denylisted_nodes=nodes, fully_quantize=True)
    return debugger.get_nondebug_quantized_model(), nodes


def layer_errors(source, calibration: np.ndarray) -> list[dict]:
    """The layer-wise int8 error of the Keras model `source`, from the TFLite converter's quantization debugger.

    The debugger's model computes every quantized op both in int8 and in float, on the same inputs,
    for each calibration sample. Returns one dict per quantized op: `layer` (the Keras layer, or None),
    `node` (the op's output tensor, what a deny-list names), `op`, `error` (the RMS difference in units of
    a typical activation: rmse / median |nonzero float output|), `relative_error` (||float - int8|| /
    ||float||), `rmse`, `max_abs_error` and the output `scale`, all over the calibration samples.
    """
    import math

    from edgepress.compat import tensorflow

    tf = tensorflow()
    converter, _ = _converter(tf, source, "int8", calibration)
    inputs = calibration_inputs(source, calibration, "TFLite int8")
    samples = lambda: ([s[None]] for s in inputs)  # noqa: E731
    options = tf.lite.experimental.QuantizationDebugOptions
    try:
        with quiet():
            calibrated = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=samples, debug_options=options(fully_quantize=True)
            )
            # A debugger made from a converter does not keep intermediate tensors alive, so its direct
            # comparisons could read reused memory; one made from the debug model's bytes keeps them all.
            debugger = tf.lite.experimental.QuantizationDebugger(
                quant_debug_model_content=calibrated.get_debug_quantized_model(), debug_dataset=samples,
                debug_options=options(layer_direct_compare_metrics=_DIRECT_METRICS),
            )
            rows = _layer_table(debugger, calibrated.calibrated_model)
    except Exception as e:  # the debugger raises ValueError when nothing was quantized, MLIR errors otherwise
        raise EdgepressError(
            f"The TFLite quantization debugger could not analyse '{source.name}': {first_line(e)}. "
            "Check that the model converts at precision int8."
        ) from None
    layers, outputs = layer_names(source.model), output_layers(source.model)
    suffixed = scopes_suffixed(source.model)
    errors = []
    def ratio(error: float, reference: float) -> float:
        return error / reference if reference > 0 else (0.0 if error == 0 else math.inf)

    for row in rows:
        error_sq, float_sq = float(row["error_sq"]), float(row["float_sq"])
        errors.append({
            "layer": layer_of(row["tensor_name"], layers, outputs, suffixed),
            "node": row["tensor_name"],
            "op": row["op_name"],
            "error": ratio(math.sqrt(error_sq), float(row["typical"])),
            "relative_error": ratio(math.sqrt(error_sq), math.sqrt(float_sq)),
            "rmse": math.sqrt(error_sq),
            "max_abs_error": float(row["max_abs_error"]),
            "scale": float(row["scale"]),
        })
    return errors


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * scale


# Per-sample values; the debugger averages each over the samples.
_DIRECT_METRICS = {
    "error_sq": lambda f, q, scale, zp: float(np.mean(np.square(f - _dequantize(q, scale, zp)))),
    "float_sq": lambda f, q, scale, zp: float(np.mean(np.square(f))),
    "typical": lambda f, q, scale, zp: typical_magnitude(f),
}


def _layer_table(debugger, calibrated: bytes) -> list[dict]:
    """Run the debugger and return its per-op statistics (op_name, tensor_name, metrics, scale) as rows.

    `tensor_name` is the op's output tensor as the deny-list knows it: the name in the `calibrated`
    model (the debugger's dump strips a trailing digit from every name, `StatefulPartitionedCall:0`
    included, so each name is matched back to the calibrated model's tensors).
    """
    import csv
    import io

    from ai_edge_litert.interpreter import Interpreter

    debugger.run()
    out = io.StringIO()
    debugger.layer_statistics_dump(out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    known = {t["name"] for t in Interpreter(model_content=calibrated).get_tensor_details()}
    for row in rows:
        name = row["tensor_name"]
        if name not in known:
            stripped = [k for k in known if k.startswith(name) and k[len(name) :].isdigit()]
            row["tensor_name"] = stripped[0] if len(stripped) == 1 else name
    return rows
