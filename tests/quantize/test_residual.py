"""int8 that stays int8 on residual networks (issue 27), on real data (scikit-learn's digits) with the real TFLite
converter, LiteRT, tf2onnx and onnxruntime:

- an accuracy-aware artifact under its int8 floor fails the run whatever else is exported;
- the ONNX float fallback names layers and nodes by one rule (Conv->BN with no activation, Conv->BN->ReLU6,
  depthwise and Add patterns of a MobileNetV2-style block), and a failure inside a remedy is edgepress's bug (70);
- equalize takes a residual stream (every tensor an Add ties) as one, so a residual CNN whose stream carries a few
  outlier channels stays fully int8.

The residual model is benchmarks/quantization.py's (one builder for the benchmark and the tests).
"""

import importlib.util
import json
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.compress.equalize import EqualizeConfig, equalize, find_pairs
from edgepress.errors import EdgepressError, InternalError
from edgepress.models import training
from tests.conftest import REPO

runner = CliRunner()


def _benchmark():
    spec = importlib.util.spec_from_file_location("quantization_bench", REPO / "benchmarks" / "quantization.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits8():
    from edgepress.models.datasets import load_dataset

    return load_dataset("digits", test_size=300).fit_to((8, 8, 1))


@pytest.fixture(scope="module")
def residual(digits8):
    """(the residual CNN trained on digits, the same with outlier channels in its residual stream)."""
    from edgepress.compat import keras

    k, bench = keras(), _benchmark()
    k.utils.set_random_seed(0)
    model = bench.residual_cnn(k, (8, 8, 1))
    training.fit(model, digits8.x_train, digits8.y_train, epochs=12, learning_rate=3e-3)
    outliers = training.copy_model(model)
    bench.add_stream_outliers(outliers)
    a, b = training.predict(model, digits8.x_test), training.predict(outliers, digits8.x_test)
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()  # the same function
    return model, outliers


@pytest.fixture(scope="module")
def outlier_mlp(digits8):
    """Flatten, Dense 128 relu, Dense 10 with 3 hidden units 1000x larger (and their outgoing weights 1000x smaller):
    the float fallback keeps the wide layer, nearly all the MACs, in float."""
    from edgepress.compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Flatten(), k.layers.Dense(128, activation="relu",
                          name="wide"), k.layers.Dense(10, name="logits")], name="outlier_mlp")
    training.fit(model, digits8.x_train, digits8.y_train, epochs=8)
    w1, b1 = model.get_layer("wide").get_weights()
    w2, b2 = model.get_layer("logits").get_weights()
    w1[:, :3] *= 1000
    b1[:3] *= 1000
    w2[:3, :] /= 1000
    model.get_layer("wide").set_weights([w1, b1])
    model.get_layer("logits").set_weights([w2, b2])
    return model


# -- the floor is part of the verdict ------------------------------------------------------------------------


def test_an_int8_artifact_under_its_floor_fails_the_run_even_beside_a_passing_fp32_export(outlier_mlp, tmp_path):
    model, out = tmp_path / "mlp.keras", tmp_path / "run"
    outlier_mlp.save(model)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "floor", "model": {"path": str(model)},
        "data": {"dataset": "digits", "test_size": 300, "calibration_samples": 100, "check_samples": 50},
        # equalize off: the float fallback keeps the wide layer (most MACs) in float, under the 50% floor.
        "exports": [{"format": "tflite", "precision": "fp32"},
                    {"format": "tflite", "quantize": {"max_accuracy_drop": "1%", "equalize": False}}],
        "gates": {"require": "any"},
        "measure": {"runs": 3, "warmup": 1},
    }))
    result = runner.invoke(app, ["run", str(recipe), "-o", str(out)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())  # whatever the terminal width
    message = text[text.index("gates failed:"):]
    assert re.findall(r"gate (\w+)", message)[0] == "quantize_min_int8_macs"  # the floor leads
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] is False
    final = next(a for a in results["artifacts"] if a.get("accuracy_aware", {}).get("role") == "final")
    fp32 = next(a for a in results["artifacts"] if a["precision"] == "fp32")
    assert fp32["passed"] and not final["gates"]["quantize_min_int8_macs"]["passed"]
    assert final["gates"]["quantize_max_accuracy_drop"]["passed"]  # the budget holds: the floor alone fails it
    # Only the delivered artifact's failures lead; the artifacts the search tried have their own section.
    delivered, _, tried = message.partition("artifacts tried by the accuracy-aware search")
    assert final["name"] in delivered
    others = [a["name"] for a in results["artifacts"] if a.get("accuracy_aware", {}).get("role") in ("full", "tried")]
    assert others and not any(name in delivered for name in others)
    assert any(name in tried for name in others)


# -- ONNX: layers and nodes by one rule; failures inside a remedy are bugs ---------------------------------------


@pytest.mark.parametrize("layer", ["b2_project", "b2_project_bn", "b2_expand", "b2_dw", "add"])
def test_onnx_keeps_each_pattern_float_by_its_keras_layer(residual, digits8, tmp_path, layer):
    # Conv->BN with no activation (folded into one Conv node named after the conv, its output after the BN),
    # Conv->BN->ReLU6, a depthwise Conv, and the residual Add.
    import onnx

    from edgepress.deploy import export_onnx

    _, model = residual
    artifact = export_onnx(model, tmp_path / "m.onnx", "int8_static", digits8.calibration(50), float_layers=[layer])
    nodes = artifact.quantization["float_nodes"]
    owner = layer.removesuffix("_bn")  # a folded BatchNormalization's node is its Conv's
    assert nodes and all(f"/{owner}/" in n for n in nodes), nodes
    graph = onnx.load(str(artifact.path)).graph
    makers = {out: n.op_type for n in graph.node for out in n.output}
    kept = [n for n in graph.node if n.name in nodes]
    assert kept and all(n.op_type in ("Conv", "Add") for n in kept)
    for node in (n for n in kept if n.op_type == "Conv"):  # float in the file: no DequantizeLinear makes its weights
        assert all(makers.get(name) != "DequantizeLinear" for name in node.input[1:])


def test_every_layer_the_onnx_sensitivity_names_can_be_kept_float(residual, digits8, tmp_path):
    from edgepress.deploy import export_onnx
    from edgepress.deploy.onnx import layer_errors
    from edgepress.models.source import wrap

    _, model = residual
    calibration = digits8.calibration(50)
    float_model = export_onnx(model, tmp_path / "f.onnx", "fp32")
    qdq = export_onnx(model, tmp_path / "q.onnx", "int8_static", calibration)
    named = {row["layer"] for row in layer_errors(wrap(model), float_model.path, qdq.path, calibration)} - {None}
    assert {"b2_project", "b2_expand", "b2_dw", "add"} <= named
    assert "b2_project_bn" not in named  # the folded BatchNormalization's tensor is named after its Conv's node
    for i, layer in enumerate(sorted(named)):
        export_onnx(model, tmp_path / f"k{i}.onnx", "int8_static", calibration, float_layers=[layer])


def test_the_onnx_float_fallback_on_the_mobilenet_v2_pattern_runs(residual, digits8, tmp_path):
    from edgepress.quantize import quantize_to_budget

    _, model = residual
    result = quantize_to_budget(model, "onnx", tmp_path, digits8.calibration(100), digits8.x_test, digits8.y_test,
                                max_accuracy_drop="0.5%", equalize=False, max_float_layers=2)
    assert any(t.float_layers for t in result.trials)  # the fallback ran, keeping Keras layers by name


def test_a_failure_inside_a_remedy_is_a_bug_exit_70_with_the_traceback(outlier_mlp, tmp_path, monkeypatch):
    # Fault injection (the one way to make edgepress's own search fail on purpose): the sensitivity step raises.
    from edgepress.quantize import accuracy_aware

    def broken(*args, **kwargs):
        raise EdgepressError("no quantized op belongs to 'b2_project_bn'")

    monkeypatch.setattr(accuracy_aware, "_layer_sensitivity", broken)
    with pytest.raises(InternalError, match="failed inside its own search.*b2_project_bn"):
        accuracy_aware.quantize_to_budget(outlier_mlp, "tflite", tmp_path / "api", _digits_x(), _digits_x()[:20],
                                          np.zeros(20, np.int64), max_accuracy_drop="1%")
    model, out = tmp_path / "mlp.keras", tmp_path / "run"
    outlier_mlp.save(model)
    result = runner.invoke(app, ["quantize", str(model), "--max-accuracy-drop", "1%", "--data", "digits",
                                 "--test-size", "100", "--calibration-samples", "20", "--runs", "2", "-o", str(out)])
    assert result.exit_code == 70, result.output
    assert "internal error" in result.output and "Traceback" not in result.output
    saved = list(out.glob("edgepress-error-*.txt"))
    assert len(saved) == 1 and "no quantized op belongs to 'b2_project_bn'" in saved[0].read_text()


def _digits_x():
    from edgepress.models.datasets import load_dataset

    return load_dataset("digits", test_size=300).fit_to((8, 8, 1)).calibration(20)


# -- equalization across the residual Add ---------------------------------------------------------------------


def test_equalize_takes_the_residual_stream_as_one_and_keeps_the_function(residual, digits8):
    _, model = residual
    details = find_pairs(model)
    (group,) = details.groups
    assert group.adds == ["add"]
    assert set(group.holders) == {"ds_project_bn", "b2_project_bn"} and set(group.readers) == {"b2_expand", "head"}
    assert "ds_project" not in details.left and "b2_project" not in details.left
    # The pairs around the depthwise layers go through ReLU6 layers: scaled within the clip.
    clipped = {(p.first, p.second) for p in details.pairs if p.clips}
    assert {("stem", "ds_dw"), ("ds_dw", "ds_project"), ("b2_expand", "b2_dw"), ("b2_dw", "b2_project")} <= clipped
    assert set(details.left) == {"logits"}  # the model's output: nothing after it to take a scale

    calibration = digits8.calibration(200)
    equalized = equalize(model, calibration, None, EqualizeConfig(bias_absorption=False))
    a, b = training.predict(model, calibration), training.predict(equalized, calibration)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()  # exact where no ReLU6 clip is reached (calibration data)
    a, b = training.predict(model, digits8.x_test), training.predict(equalized, digits8.x_test)
    assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()  # and close on unseen data
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.99
    # The outlier channels of the stream no longer stand out: its per-channel ranges are within a small factor.
    from edgepress.models.keras_graph import values

    def spread(m) -> float:
        (stream,) = values(m, [("add", 0, 0)], calibration)
        top = np.abs(stream.reshape(-1, stream.shape[-1])).max(axis=0)
        return float(top.max() / np.median(top))

    assert spread(model) > 50 and spread(equalized) < 10


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_the_residual_outlier_cnn_stays_int8_within_budget(residual, digits8, tmp_path, fmt):
    from edgepress.deploy.coverage import int8_macs
    from edgepress.quantize import quantize_to_budget

    _, model = residual
    lines = []
    result = quantize_to_budget(model, fmt, tmp_path, digits8.calibration(100), digits8.x_test, digits8.y_test,
                                max_accuracy_drop="1%", on_trial=lines.append)
    assert result.full.accuracy_drop > 0.05  # plain int8 breaks it
    assert result.budget_met and result.chosen.remedy.startswith("equalize")
    assert result.chosen.float_layers == [] and int8_macs(result.chosen.artifact.path)["int8_macs"] >= 0.9
    said = " ".join(lines)
    assert "equalization: " in said and "the residual stream of add" in said  # the console says so
    assert "partial" not in said  # every pair and the stream equalized (the logits, the output, have no next layer)


def test_the_console_says_what_equalization_left_and_why():
    from edgepress.compress.equalize import MODEL_OUTPUT
    from edgepress.quantize.accuracy_aware import _left_text

    details = {"pairs": [["a", "b"]], "left": {"logits": MODEL_OUTPUT, "c": "it feeds 'squash' (Activation), ..."},
               "ties": {"add_1": "is read by 'norm' (BatchNormalization), ..."}}
    said = _left_text(details)
    assert "'c' it feeds 'squash'" in said and "residual stream of 'add_1' is read by 'norm'" in said
    assert "logits" not in said


def test_a_pair_through_relu6_is_scaled_within_the_clip(digits8):
    from edgepress.compat import keras
    from edgepress.models.keras_graph import values

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Flatten(), k.layers.Dense(32, name="d1"),
                          k.layers.ReLU(6.0, name="clip"), k.layers.Dense(10, name="d2")], name="relu6_mlp")
    training.fit(model, digits8.x_train, digits8.y_train, epochs=4)
    calibration = digits8.calibration(200)
    (trained,) = values(model, [("d1", 0, 0)], calibration)
    tiny = int(np.argmax(np.where(np.arange(32) == 0, -np.inf, trained.max(axis=0))))  # a live unit, not unit 0
    w, b = model.get_layer("d1").get_weights()
    w[:, 0] *= 100  # unit 0 now reaches the clip; unit `tiny` is 100x smaller: an imbalance to even out
    w[:, tiny] /= 100
    b[tiny] /= 100
    model.get_layer("d1").set_weights([w, b])
    (pair,) = find_pairs(model).pairs
    assert (pair.first, pair.second) == ("d1", "d2") and pair.clips and pair.shift_key is None

    equalized = equalize(model, calibration, None, EqualizeConfig())
    a, b2 = training.predict(model, calibration), training.predict(equalized, calibration)
    assert np.abs(a - b2).max() <= 1e-4 * np.abs(a).max()  # exact where the clip is not reached
    (before,), (after,) = values(model, [("d1", 0, 0)], calibration), values(equalized, [("d1", 0, 0)], calibration)
    reached = before.max(axis=0) >= 6
    assert reached[0] and np.allclose(before[:, reached], after[:, reached])  # a clipped channel keeps its scale
    assert after[:, ~reached].max() <= 0.9 * 6 + 1e-4  # the others stay under the clip
    assert after[:, tiny].max() > 3 * before[:, tiny].max() > 0  # the tiny channel was evened out
