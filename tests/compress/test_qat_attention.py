"""qat on attention models: Keras 3 and tf_keras encoders are trained quantization-aware natively (tfmot cannot wrap
MultiHeadAttention) and exported as full-integer TFLite and QDQ ONNX; an attention layer whose matmuls it cannot
reach is refused, naming the layer and what works; a tfmot QAT model's onnx int8_static is its own QDQ file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.compress.qat_native import _fake_quantize_dense, kernel_output_axes, on_grid, output_axes
from tests.models import encoders

DIGITS = {"dataset": "digits", "train_size": 300, "test_size": 60, "calibration_samples": 40, "check_samples": 20}
MEASURE = {"runs": 3, "warmup": 1, "target_ci_width": None}
cli = CliRunner()


def run(tmp_path, recipe: dict, name: str = "run"):
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    return cli.invoke(app, ["run", str(tmp_path / f"{name}.yaml"), "-o", str(tmp_path / name)])


def qat_encoder(tmp_path, write) -> tuple[dict, dict, dict]:
    """The encoder `write` makes, through qat to tflite int8 and onnx int8_static: its source and qat model rows
    and its artifacts by (format, precision)."""
    path = tmp_path / "enc.keras"
    write(path)
    result = run(tmp_path, {
        "name": "enc", "model": {"path": str(path)}, "data": DIGITS, "measure": MEASURE,
        "steps": [{"type": "qat", "fine_tune_epochs": 2, "batch_size": 32, "learning_rate": 0.0005}],
        "exports": [{"format": "tflite", "precision": "int8"}, {"format": "onnx", "precision": "int8_static"}],
    })
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    source, tuned = results["models"]
    return source, tuned, {(a["format"], a["precision"]): a for a in results["artifacts"]}


def test_a_keras3_encoder_trains_quantization_aware_and_exports_full_integer_tflite_and_qdq_onnx(tmp_path):
    import keras

    source, tuned, rows = qat_encoder(tmp_path, encoders.keras3_encoder)
    assert tuned["qat"]["attention_layers"] == ["mha"]
    assert tuned["qat"]["kernels"] == 4 + 4  # embed, mlp_up, mlp_down, head; the attention's q, k, v, output
    assert tuned["accuracy"] >= source["accuracy"] - 0.05
    tflite, onnx = rows[("tflite", "int8")], rows[("onnx", "int8_static")]
    assert tflite["quantization"]["int8_macs"] >= 0.9
    assert onnx["quantization"]["int8_macs"] > 0.5
    for row in (tflite, onnx):
        assert row["check"]["top1_agreement"] >= 0.8 and row["latency"]["p50"] > 0
        assert row["metrics"]["accuracy"] >= tuned["accuracy"] - 0.1
    # The run's model is a plain Keras 3 model (no fake-quant left) whose kernels are on their int8 grid.
    model = keras.saving.load_model(tmp_path / "run" / "models" / "1-qat.keras", safe_mode=True)
    mha = model.get_layer("mha")
    for layer in [model.get_layer(n) for n in ("embed", "mlp_up", "head")] + [mha.query_dense, mha.output_dense]:
        kernel = np.asarray(layer.kernel.numpy())
        np.testing.assert_allclose(on_grid(kernel, output_axes(layer)), kernel, atol=1e-6)


def test_input_ranges_are_tracked_while_training_only():
    import keras

    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, dense(inputs))
    kernel, axes = _fake_quantize_dense(__import__("tensorflow"), dense)
    assert axes == (1,)
    tracked = dense.call.range
    x = np.linspace(-2, 3, 8 * 4, dtype="float32").reshape(8, 4)
    model(x, training=False)
    assert not bool(tracked.seen.numpy())  # inference leaves the range alone, and passes the input unchanged
    model(x, training=True)
    assert bool(tracked.seen.numpy()) and tracked.low.numpy() == pytest.approx(-2) and tracked.high.numpy() == 3
    # Now the input is rounded onto 256 levels between -2 and 3: the output moves off the float layer's, by at most
    # half a level through each weight.
    x = x + 0.003
    w, b = np.asarray(kernel.numpy()), np.asarray(dense.bias.numpy())
    moved = np.abs(np.asarray(model(x, training=False)) - (x @ w + b))
    assert moved.max() > 1e-4 and (moved <= 5 / 255 / 2 * np.abs(w).sum(0) + 1e-5).all()


@pytest.mark.parametrize("equation, shape, axes", [("abc,cde->abde", (16, 2, 8), (1, 2)),
                                                   ("abcd,cde->abe", (2, 8, 16), (2,)),
                                                   ("ab,bc->ac", (8, 4), (1,))])
def test_an_einsum_kernel_is_quantized_per_output_channel(equation, shape, axes):
    assert kernel_output_axes(equation, len(shape)) == axes
    kernel = np.random.default_rng(0).normal(size=shape).astype("float32")
    grid = on_grid(kernel, axes)
    reduce = tuple(a for a in range(len(shape)) if a not in axes)
    steps = np.max(np.abs(kernel), axis=reduce, keepdims=True) / 127
    np.testing.assert_allclose(grid / steps, np.round(grid / steps), atol=1e-3)  # on each channel's own grid
    assert np.abs(grid - kernel).max() <= steps.max() / 2 + 1e-6


def test_a_tf_keras_encoder_trains_quantization_aware_natively_and_exports_full_integer_tflite_and_qdq_onnx(tmp_path):
    from edgepress.compat import keras

    source, tuned, rows = qat_encoder(tmp_path, encoders.tf_keras_encoder)
    assert tuned["qat"]["how"] == "native (tf_keras)" and tuned["qat"]["attention_layers"] == ["mha"]
    assert tuned["qat"]["kernels"] == 4 + 4  # embed, mlp_up, mlp_down, head; the attention's q, k, v, output
    assert tuned["accuracy"] >= source["accuracy"] - 0.05
    assert rows[("tflite", "int8")]["quantization"]["int8_macs"] >= 0.9
    for row in rows.values():
        assert row["check"]["top1_agreement"] >= 0.8 and row["latency"]["p50"] > 0
        assert row["metrics"]["accuracy"] >= tuned["accuracy"] - 0.1
    model = keras().models.load_model(tmp_path / "run" / "models" / "1-qat.keras", compile=False)
    mha = model.get_layer("mha")
    for layer in [model.get_layer("embed"), mha._query_dense, mha._output_dense]:
        kernel = np.asarray(layer.kernel.numpy())
        np.testing.assert_allclose(on_grid(kernel, output_axes(layer)), kernel, atol=1e-6)


def test_a_tf_keras_dense_tracks_its_input_range_while_training_only():
    import tensorflow as tf

    from edgepress.compat import keras

    tf_keras = keras()
    inputs = tf_keras.Input((4,))
    dense = tf_keras.layers.Dense(3)
    model = tf_keras.Model(inputs, dense(inputs))
    _fake_quantize_dense(tf, dense)  # tf_keras passes no `training` to a Dense: it is read from the call context
    tracked = dense.call.range
    x = np.linspace(-2, 3, 8 * 4, dtype="float32").reshape(8, 4)
    model.compile("adam", "mse")
    model.predict(x, verbose=0)
    assert not bool(tracked.seen.numpy())
    model.fit(x, np.zeros((8, 3)), epochs=1, verbose=0)
    assert bool(tracked.seen.numpy()) and tracked.low.numpy() == pytest.approx(-2) and tracked.high.numpy() == 3


def test_a_tfmot_qat_models_onnx_int8_static_is_its_own_qdq_file(tmp_path):
    result = run(tmp_path, {"name": "cnn", "model": {"zoo": "seed_cnn", "train_epochs": 1}, "data": DIGITS,
                            "measure": MEASURE, "steps": [{"type": "qat"}],
                            "exports": [{"format": "onnx", "precision": "int8_static"}]})
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "run" / "results.json").read_text())["artifacts"]
    assert row["quantization"]["activations"] == "int8 (ranges learned by qat)"
    assert row["check"]["top1_agreement"] >= 0.9
    import onnx

    ops = {node.op_type for node in onnx.load(row["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # tfmot's fake-quant, as tf2onnx converts it


def test_an_attention_layer_whose_matmuls_it_cannot_reach_is_refused_naming_it_and_the_layers_that_work():
    import keras

    from edgepress.compress.qat import QatConfig
    from edgepress.compress.qat_native import check, handles
    from edgepress.errors import EdgepressError

    inputs = keras.Input((8, 16))
    h = keras.layers.GroupQueryAttention(8, 4, 2, name="gqa")(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(h))
    assert handles(model)
    with pytest.raises(EdgepressError, match=r"layer 'gqa' \(GroupedQueryAttention\).*`layers: \[head\]`"):
        check(model, QatConfig())
    check(model, QatConfig(layers=["head"]))  # the rest is quantization-aware
    with pytest.raises(EdgepressError, match="preserve: none"):
        check(model, QatConfig(layers=["head"], preserve="sparsity"))
