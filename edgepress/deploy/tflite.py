"""TFLite export: a Keras model to a .tflite file in one precision.

Precisions, as the TFLite converter names them:
- fp32: no optimization.
- fp16: float16 weights (dequantized to float32 at load on CPU; GPU delegates run them natively).
- dynamic: dynamic-range quantization, int8 weights, float activations; no calibration data.
- int8: full-integer quantization, int8 weights, activations, input and output; calibrated.
- int16x8: int16 activations, int8 weights (more accurate than int8); calibrated, float input/output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepress import files
from edgepress.artifact import Artifact, TensorInfo
from edgepress.compat import quiet
from edgepress.deploy.check import calibration_inputs, compare
from edgepress.deploy.layers import layer_names, layer_of, nodes_of, output_layers, typical_magnitude
from edgepress.errors import EdgepressError, first_line
from edgepress.formats import artifact_filename, is_calibrated, precision_names, sparse_precisions

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
) -> Artifact:
    """Convert `model` to `path` at `precision`; check it against `model` on `check_data`.

    `calibration` (inputs from the recipe's data) is required for int8 and int16x8.
    `float_layers` (int8 only) names Keras layers (or TFLite op output tensors) to leave in float32:
    they go on the deny-list of the converter's quantization debugger, everything else is int8 as usual.
    `sparse` (fp32, fp16) stores weights that are mostly zeros (pruned, e.g. 2:4) as sparse tensors with
    DENSIFY ops (the converter's EXPERIMENTAL_SPARSITY): smaller files, and XNNPACK can run some
    architectures sparsely; the manifest counts the sparse tensors.
    `batch_size` fixes the input's batch dimension (default: dynamic). Recurrent layers need it: the
    converter turns a Keras LSTM into its fused UNIDIRECTIONAL_SEQUENCE_LSTM op, and a GRU into a
    WHILE loop, only when the batch and sequence length are static.
    `model` is a Keras model or a plain SavedModel (`edgepress.models.graphs.SavedModelGraph`).
    `path` defaults to `edgepress.formats.artifact_filename` of the model's name, in the working directory.
    Writes the file and its manifest atomically and returns the Artifact.
    """
    from edgepress.compat import tensorflow

    tf = tensorflow()
    if precision not in TFLITE_PRECISIONS:
        raise EdgepressError(f"Unknown TFLite precision '{precision}'. Use one of: {', '.join(TFLITE_PRECISIONS)}.")
    if float_layers and precision != "int8":
        raise EdgepressError(
            f"float_layers keeps layers of a full-integer model in float; it needs precision int8, not '{precision}'."
        )
    if sparse and precision not in SPARSE_PRECISIONS:
        raise EdgepressError(
            f"Sparse TFLite export works at precision {' or '.join(SPARSE_PRECISIONS)}, not '{precision}': sparse "
            f"{precision} files are larger than dense ones and LiteRT's XNNPACK delegate cannot load them."
        )
    _check_source(model, batch_size)
    if precision in CALIBRATED:
        check_calibratable(model, precision, batch_size)
    converter, quantization = _converter(tf, model, precision, calibration, batch_size)
    if sparse:
        converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    try:
        with quiet():
            if float_layers:
                samples = calibration_inputs(model, calibration, "TFLite int8")
                data, quantization["float_nodes"] = _keep_float(tf, converter, model, samples, float_layers)
                quantization["float_layers"] = list(float_layers)
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
            f"The TFLite converter could not make a {precision} model of '{model.name}': {first_line(e)}. {hint}"
        ) from None

    if sparse:
        quantization.update(sparse=True, sparse_tensors=_sparse_tensors(data))
    path = Path(path or artifact_filename(model.name, "tflite", precision, batch_size, sparse))
    with files.atomic_path(path) as tmp:
        tmp.write_bytes(data)
        check = compare(model, tmp, check_data) if check_data is not None else {}
    inputs, outputs = signature(path)
    return Artifact.record(path, "tflite", precision, inputs=inputs, outputs=outputs, steps=list(steps),
                           quantization=quantization, check=check)


def signature(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of a .tflite file, with (scale, zero_point) for quantized tensors."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))

    def info(d) -> TensorInfo:
        scale, zero_point = d["quantization"]
        return TensorInfo(
            name=d["name"],
            shape=[int(s) for s in d["shape_signature"]],
            dtype=np.dtype(d["dtype"]).name,
            quantization=(float(scale), int(zero_point)) if scale else None,
        )

    return [info(d) for d in interpreter.get_input_details()], [info(d) for d in interpreter.get_output_details()]


def _sparse_tensors(data: bytes) -> int:
    """How many tensors of a .tflite file the converter stored sparse (it only does so for mostly-zero weights)."""
    from ai_edge_litert.interpreter import Interpreter

    return sum(1 for t in Interpreter(model_content=data).get_tensor_details() if t.get("sparsity_parameters"))


def _check_source(model, batch_size: int | None) -> None:
    """Refuse what no TFLite export can come from: a model with no TFLite path, a batch size below 1."""
    from edgepress.models.source import as_source

    why = as_source(model).why_not("tflite")
    if why:
        raise EdgepressError(f"{model.path}: {why}")
    if batch_size is not None and batch_size < 1:
        raise EdgepressError(f"batch_size must be 1 or more (or None for a dynamic batch), got {batch_size}.")


def check_calibratable(model, precision: str, batch_size: int | None = None) -> None:
    """Refuse a calibrated export (int8, int16x8) of a model whose TFLite graph loops over time.

    A Keras GRU or SimpleRNN (unless unroll=True) becomes a WHILE loop in TFLite, and the converter's
    calibrator crashes the whole process on WHILE loops (a segmentation fault in TensorFlow 2.21), so
    no error could be reported once it starts. Keras layers are checked by type; a SavedModel is
    converted at fp32 first and its ops are checked.
    """
    from edgepress.models.source import as_source

    if not as_source(model).trainable:  # a graph: its ops tell, not its layers
        from ai_edge_litert.interpreter import Interpreter

        from edgepress.compat import tensorflow

        try:
            with quiet():
                plain = _source_converter(tensorflow(), model, batch_size).convert()
        except Exception:  # the export itself reports conversion errors, with their hint
            return
        ops = {op["op_name"] for op in Interpreter(model_content=plain)._get_ops_details()}
        loops = [f"'{model.name}'"] if "WHILE" in ops else []
    else:
        loops = [f"'{layer.name}' ({type(layer).__name__})" for layer in _looping_layers(model)]
    if loops:
        raise EdgepressError(
            f"TFLite {precision} export of '{model.name}' is refused: {', '.join(loops)} becomes a WHILE loop in "
            "TFLite, and the converter's calibration crashes on WHILE loops (TensorFlow 2.21). Export it at "
            "precision dynamic or fp16 (no calibration), or build the layer with unroll=True (the steps written out "
            "one by one, which calibrate), or use an LSTM (TFLite's fused LSTM op calibrates)."
        )


def _looping_layers(model) -> list:
    """The Keras recurrent layers that TFLite turns into a WHILE loop: every RNN but LSTM, unless unrolled."""
    from edgepress.compat import keras

    layers = keras().layers
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):  # a nested model
            found += _looping_layers(layer)
            continue
        inner = [layer.forward_layer, layer.backward_layer] if isinstance(layer, layers.Bidirectional) else [layer]
        if any(isinstance(r, layers.RNN) and not r.unroll and not isinstance(r, layers.LSTM) for r in inner):
            found.append(layer)
    return found


def _source_converter(tf, model, batch_size: int | None):
    """A plain TFLiteConverter for `model` (any source kind), its batch fixed to `batch_size` if given."""
    from edgepress.models.source import as_source

    return as_source(model).tflite_converter(batch_size)


def _converter(tf, model, precision: str, calibration: np.ndarray | None, batch_size: int | None = None):
    """A TFLiteConverter set up for `precision`, and the quantization facts for the manifest."""
    from edgepress.models.graphs import input_dtype

    converter = _source_converter(tf, model, batch_size)
    quantization: dict = {}
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision in CALIBRATED:
        samples = calibration_inputs(model, calibration, f"TFLite {precision}").astype(input_dtype(model))
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


def _keep_float(tf, converter, model, samples: np.ndarray, float_layers: Sequence[str]) -> tuple[bytes, list[str]]:
    """A full-integer model with the ops of `float_layers` left in float, and the ops' output tensor names.

    The quantization debugger calibrates once, then quantizes with its deny-list (`denylisted_nodes`);
    fully_quantize keeps int8 input and output, like the plain int8 export.
    """
    options = tf.lite.experimental.QuantizationDebugOptions
    # The debugger's own run is only needed for the op names, so one sample is enough.
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: [[samples[:1]]], debug_options=options(fully_quantize=True)
    )
    quantized = [row["tensor_name"] for row in _layer_table(debugger, debugger.calibrated_model)]
    nodes = nodes_of(float_layers, quantized, model, "TFLite int8 float_layers")
    if set(nodes) == set(quantized):
        raise EdgepressError(
            f"float_layers {', '.join(float_layers)} would leave every quantized op of '{model.name}' in float; "
            "that is the fp32 export. Keep fewer layers in float, or export precision fp32."
        )
    debugger.options = options(denylisted_nodes=nodes, fully_quantize=True)
    return debugger.get_nondebug_quantized_model(), nodes


def layer_errors(model, calibration: np.ndarray) -> list[dict]:
    """The layer-wise int8 error of `model`, from the TFLite converter's quantization debugger.

    The debugger's model computes every quantized op both in int8 and in float, on the same inputs,
    for each calibration sample. Returns one dict per quantized op: `layer` (the Keras layer, or None),
    `node` (the op's output tensor, what a deny-list names), `op`, `error` (the RMS difference in units of
    a typical activation: rmse / median |nonzero float output|), `relative_error` (||float - int8|| /
    ||float||), `rmse`, `max_abs_error` and the output `scale`, all over the calibration samples.
    """
    import math

    from edgepress.compat import tensorflow

    tf = tensorflow()
    converter, _ = _converter(tf, model, "int8", calibration)
    inputs = calibration_inputs(model, calibration, "TFLite int8")
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
            f"The TFLite quantization debugger could not analyse '{model.name}': {first_line(e)}. "
            "Check that the model converts at precision int8."
        ) from None
    layers, outputs = layer_names(model), output_layers(model)
    errors = []
    def ratio(error: float, reference: float) -> float:
        return error / reference if reference > 0 else (0.0 if error == 0 else math.inf)

    for row in rows:
        error_sq, float_sq = float(row["error_sq"]), float(row["float_sq"])
        errors.append({
            "layer": layer_of(row["tensor_name"], layers, outputs),
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
