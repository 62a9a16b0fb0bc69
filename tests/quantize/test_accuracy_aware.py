"""Accuracy-aware quantization on real data (scikit-learn's digits): full int8 breaks a model whose `hidden`
layer has a few huge activation channels; edgepress finds and keeps a small, named set of layers in float.

Real TensorFlow, LiteRT, tf2onnx and onnxruntime throughout; the model is a small CNN on 8x8 digits so
the whole file runs in about a minute.
"""

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import edgepress
from edgepress.artifact import Artifact
from edgepress.cli import app
from edgepress.deploy import export_onnx, export_tflite
from edgepress.deploy.layers import layer_of
from edgepress.deploy.runner import open_model
from edgepress.errors import EdgepressError, GateFailed
from edgepress.models import training
from edgepress.quantize import quantize_to_budget
from edgepress.specs.quantize import parse_config

runner = CliRunner()
LAYERS = {"conv1", "conv2", "features", "hidden", "mid", "logits"}


@pytest.fixture(scope="module")
def digits8():
    from edgepress.models.datasets import load_dataset

    return load_dataset("digits", test_size=300).fit_to((8, 8, 1))


@pytest.fixture(scope="module")
def outlier_cnn(digits8):
    """A small CNN trained on digits, then given two huge activation channels in its `hidden` layer.

    The change keeps the function: hidden's units 0 and 1 are scaled by 500 and mid's weights that read
    them divided by 500 (ReLU is positively homogeneous). Per-tensor int8 ranges then span the outliers, so
    every other channel of `hidden` rounds to zero, and mid's tiny weights round to zero too.
    """
    from edgepress.compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential(
        [
            k.layers.Input((8, 8, 1)),
            k.layers.Conv2D(16, 3, activation="relu", name="conv1"),
            k.layers.Conv2D(32, 3, activation="relu", name="conv2"),
            k.layers.Flatten(name="flatten"),
            k.layers.Dense(64, activation="relu", name="features"),
            k.layers.Dense(16, activation="relu", name="hidden"),
            k.layers.Dense(16, activation="relu", name="mid"),
            k.layers.Dense(10, name="logits"),
        ],
        name="outlier_cnn",
    )
    training.fit(model, digits8.x_train, digits8.y_train, epochs=8)
    before = training.accuracy(training.predict(model, digits8.x_test), digits8.y_test)
    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("mid").get_weights()
    for unit in (0, 1):
        w1[:, unit] *= 500
        b1[unit] *= 500
        w2[unit, :] /= 500
    model.get_layer("hidden").set_weights([w1, b1])
    model.get_layer("mid").set_weights([w2, b2])
    after = training.accuracy(training.predict(model, digits8.x_test), digits8.y_test)
    assert before > 0.8 and after == pytest.approx(before, abs=0.004)  # the float model is unchanged
    return model


@pytest.mark.parametrize("fmt, calibration, search", [("tflite", {}, "linear"),
                                                       ("onnx", {"format": "qoperator", "method": "minmax"}, "bisect")])
def test_full_int8_breaks_and_a_few_named_float_layers_recover_the_budget(outlier_cnn, digits8, tmp_path, fmt,
                                                                          calibration, search):
    # equalize and bias_correction false, so the float fallback itself is what is tested (equalization fixes this
    # model alone).
    lines = []
    result = quantize_to_budget(outlier_cnn, fmt, tmp_path, digits8.calibration(100), digits8.x_test, digits8.y_test,
                                max_accuracy_drop="1%", calibration=calibration, on_trial=lines.append,
                                equalize=False, bias_correction=False, search=search)
    assert {t.remedy for t in result.trials} == {"none"} and result.equalized is None

    full, chosen = result.full, result.chosen
    assert full.float_layers == [] and full.accuracy_drop > 0.3  # full int8 demonstrably breaks the model
    assert result.budget_met and chosen.meets_budget and chosen.accuracy_drop <= 0.01
    # A small, named set: the outlier layer and the layer that reads it, at most one more.
    assert {"hidden", "mid"} <= set(chosen.float_layers) and len(chosen.float_layers) <= 3
    for row in result.float_layer_rows(chosen):  # each is needed: put back into int8, the budget is missed
        assert row["error"] > 0.1
        assert result.float_accuracy - row["accuracy_if_int8"] > 0.01
    # The ranking measured every weighted layer and put the outlier layer near the top.
    ranked = [s.layer for s in result.sensitivity]
    assert LAYERS <= set(ranked) and "hidden" in ranked[:3]
    assert [s.error for s in result.sensitivity] == sorted((s.error for s in result.sensitivity), reverse=True)
    healthy = [s.error for s in result.sensitivity if s.layer in ("conv1", "conv2", "features")]
    assert max(healthy) < 0.1 < min(s.error for s in result.sensitivity if s.layer in ("hidden", "mid"))

    # Every artifact tried is on disk with its manifest; the accuracies are the files' own.
    assert len(lines) == len(result.trials) >= 3
    for trial in result.trials:
        assert trial.artifact.path.is_file() and trial.artifact.manifest_path.is_file()
    got = training.accuracy(open_model(str(chosen.artifact.path)).predict(digits8.x_test), digits8.y_test)
    assert got == pytest.approx(chosen.accuracy)
    assert Artifact.load(chosen.artifact.path).quantization["float_layers"] == chosen.float_layers
    assert chosen.artifact.bytes < 0.5 * outlier_cnn.count_params() * 4  # still mostly int8

    if fmt == "tflite":
        assert chosen.artifact.inputs[0].dtype == "int8"  # still full-integer at its edges
    else:
        ops = {node.name: node.op_type for node in onnx.load(str(chosen.artifact.path)).graph.node}
        assert "QLinearConv" in ops.values()
        assert any(op == "Gemm" and "/hidden/" in name for name, op in ops.items())  # hidden stayed float


@pytest.mark.parametrize("fmt, calibration", [("tflite", {}), ("onnx", {"format": "qoperator"})])
def test_equalization_is_tried_before_float_layers_and_keeps_every_layer_int8(outlier_cnn, digits8, tmp_path, fmt,
                                                                              calibration):
    lines = []
    result = quantize_to_budget(outlier_cnn, fmt, tmp_path, digits8.calibration(100), digits8.x_test, digits8.y_test,
                                max_accuracy_drop="1%", calibration=calibration, on_trial=lines.append)
    full, chosen = result.full, result.chosen
    assert full.remedy == "none" and full.accuracy_drop > 0.3  # the model as given still breaks
    # The equalized model, fully quantized, is the second artifact tried, and it is enough: no float layer.
    assert result.trials[1] is chosen and chosen.remedy == "equalize" == result.remedy
    assert chosen.float_layers == [] and result.budget_met and chosen.accuracy_drop <= 0.01
    # One line per artifact tried, and one saying what equalization did (and left as it is, and why).
    assert len(result.trials) == 2 and len(lines) == 3 and "equalized" in lines[2]
    assert lines[1].startswith("equalization: ") and "hidden -> mid" in lines[1]
    assert ("hidden", "mid") in {tuple(p) for p in result.equalized["pairs"]}
    assert "after cross-layer equalization" in result.summary()
    manifest = Artifact.load(chosen.artifact.path)
    assert "equalize" in manifest.steps and manifest.name.endswith("_try1." + fmt)
    got = training.accuracy(open_model(str(chosen.artifact.path)).predict(digits8.x_test), digits8.y_test)
    assert got == pytest.approx(chosen.accuracy)
    payload = result.to_dict()
    assert payload["remedy"] == "equalize" and [t["remedy"] for t in payload["trials"]] == ["none", "equalize"]
    assert "| equalize |" in result.to_markdown()


def test_cli_quantize_meets_the_budget_and_reports_every_artifact(outlier_cnn, tmp_path):
    model, out = tmp_path / "outlier.keras", tmp_path / "run"
    outlier_cnn.save(model)
    result = runner.invoke(app, [
        "quantize", str(model), "--format", "onnx", "--precision", "int8", "--max-accuracy-drop", "1%",
        "--data", "digits", "--test-size", "300", "--calibration-samples", "100", "--search", "bisect",
        "--preset", "arm64", "--runs", "3", "-o", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "equalization" in result.output and "Traceback" not in result.output

    results = json.loads((out / "results.json").read_text())
    rows = [a for a in results["artifacts"] if "accuracy_aware" in a]
    roles = [a["accuracy_aware"]["role"] for a in rows]
    assert roles[0] == "full" and roles.count("final") == 1 and len(rows) == 2
    for row in rows:  # each artifact tried: accuracy, size and latency, measured
        assert row["metrics"]["accuracy"] is not None and row["bytes"] > 0 and row["latency"]["p50"] > 0
        assert (out / "artifacts" / row["name"]).is_file()
    final = rows[roles.index("final")]
    assert final["float_layers"] == [] and final["accuracy_aware"]["remedy"] == "equalize"  # every layer int8
    assert final["gates"]["quantize_max_accuracy_drop"]["passed"] and results["passed"]
    assert not rows[0]["gates"]["quantize_max_accuracy_drop"]["passed"]  # full int8 misses it
    assert results["best"]["x86-host"] in (final["name"], "outlier_fp32.onnx")  # never a discarded try
    assert results["quantize"][0]["calibration"]["per_channel"] is True

    sensitivity = json.loads((out / "sensitivity.json").read_text())["exports"][0]
    assert sensitivity["chosen"] == final["name"] and sensitivity["budget_met"]
    assert sensitivity["remedy"] == "equalize" and "after cross-layer equalization" in sensitivity["summary"]
    assert LAYERS <= {s["layer"] for s in sensitivity["sensitivity"]}
    text = (out / "sensitivity.md").read_text()
    assert "| hidden |" in text and "Artifacts tried" in text
    assert "Accuracy-aware quantization" in (out / "report.md").read_text()


def test_a_budget_that_cannot_be_met_fails_the_run_and_reports_the_best_found(outlier_cnn, tmp_path):
    model = tmp_path / "outlier.keras"
    outlier_cnn.save(model)
    recipe = edgepress.Recipe.from_dict({
        "name": "aa",
        "model": {"path": str(model)},
        "data": {"dataset": "digits", "test_size": 300, "calibration_samples": 100, "check_samples": 50},
        # One float layer is not enough for this model (min-max ranges, not equalized, biases as trained).
        "exports": [{"format": "onnx", "quantize": {"max_accuracy_drop": 0.01, "max_float_layers": 1,
                                                    "equalize": False, "bias_correction": False,
                                                    "calibration": {"method": "minmax"}}}],
        "measure": {"runs": 3, "warmup": 1},
    })
    report = edgepress.run(recipe, tmp_path / "run")

    outcome = report.results["quantize"][0]
    assert not outcome["budget_met"] and "BUDGET NOT MET" in outcome["summary"]
    assert not report.passed
    with pytest.raises(GateFailed, match="BUDGET NOT MET"):
        report.check()
    names = [a["name"] for a in report.artifacts]
    assert names == [t["artifact"] for t in outcome["trials"]] and len(names) == 2  # full int8 and one try
    best = max(outcome["trials"], key=lambda t: t["accuracy"])
    assert outcome["chosen"] == best["artifact"]
    assert "BUDGET NOT MET" in (tmp_path / "run" / "sensitivity.md").read_text()
    assert "BUDGET NOT MET" in (tmp_path / "run" / "report.md").read_text()


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["-1%", "150%", "2", "lots"])
def test_cli_refuses_a_budget_outside_0_to_100_percent(tmp_path, budget):
    out = tmp_path / "run"
    result = runner.invoke(app, ["quantize", str(tmp_path / "m.keras"), f"--max-accuracy-drop={budget}",
                                 "--data", "digits", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "max_accuracy_drop" in result.output and budget in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cli_without_evaluation_data_is_refused(tmp_path):
    result = runner.invoke(app, ["quantize", str(tmp_path / "m.keras"), "--max-accuracy-drop", "1%"])
    assert result.exit_code == 2 and "--data" in result.output


def test_cli_refuses_a_model_without_quantizable_layers(tmp_path):
    from edgepress.compat import keras

    k = keras()
    empty = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Flatten(), k.layers.Softmax()], name="no_weights")
    empty.save(tmp_path / "empty.keras")
    out = tmp_path / "run"
    result = runner.invoke(app, ["quantize", str(tmp_path / "empty.keras"), "--max-accuracy-drop", "1%",
                                 "--data", "digits", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "no layer with weights" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_no_evaluation_data_is_refused_and_writes_nothing(outlier_cnn, digits8, tmp_path):
    with pytest.raises(EdgepressError, match="needs evaluation data"):
        quantize_to_budget(outlier_cnn, "tflite", tmp_path / "out", digits8.calibration(10), None, None,
                           max_accuracy_drop=0.01)
    with pytest.raises(EdgepressError, match="needs evaluation data"):
        quantize_to_budget(outlier_cnn, "onnx", tmp_path / "out", digits8.calibration(10),
                           np.zeros((0, 8, 8, 1), np.float32), np.zeros(0, np.int64), max_accuracy_drop=0.01)
    assert not (tmp_path / "out").exists()


def test_onnx_only_calibration_options_are_refused_for_tflite(outlier_cnn, digits8, tmp_path):
    with pytest.raises(EdgepressError, match="calibration.method.*ONNX static quantization only"):
        quantize_to_budget(outlier_cnn, "tflite", tmp_path, digits8.calibration(10), digits8.x_test, digits8.y_test,
                           max_accuracy_drop=0.01, calibration={"method": "entropy"})
    with pytest.raises(EdgepressError, match="calibration.preset"):
        parse_config(max_accuracy_drop=0.01, calibration={"preset": "risc-v"})


@pytest.mark.parametrize("exporter, precision, suffix", [(export_tflite, "int8", "tflite"),
                                                         (export_onnx, "int8_static", "onnx")])
def test_exporters_refuse_a_float_layer_the_model_does_not_have(outlier_cnn, digits8, tmp_path, exporter, precision,
                                                               suffix):
    with pytest.raises(EdgepressError, match="'dense_99'.*hidden"):
        exporter(outlier_cnn, tmp_path / f"m.{suffix}", precision, digits8.calibration(10), float_layers=["dense_99"])
    assert list(tmp_path.iterdir()) == []


def test_layer_names_are_read_from_converted_op_names():
    layers = ["conv1", "dense", "dense_1", "logits"]
    assert layer_of("m/dense_1/MatMul;m/dense_1/Relu;m/dense_1/BiasAdd", layers) == "dense_1"
    assert layer_of("m/dense/MatMul/MatMulAddFusion", layers) == "dense"
    assert layer_of("StatefulPartitionedCall:0", layers, outputs=["logits"]) == "logits"
    assert layer_of("Transpose__42", layers) is None


@pytest.fixture(scope="module")
def outlier_mlp(digits8):
    """Flatten, Dense 128 relu, Dense 10 on digits, then 3 hidden units scaled up 1000x (and their outgoing
    weights down): the float model is unchanged, and the first Dense holds nearly all the MACs."""
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


@pytest.mark.parametrize("equalize, min_int8_macs, passes",
                         [(False, None, False), (False, 0, True), (True, None, True)])
def test_int8_that_runs_mostly_in_float_is_not_an_int8_success(outlier_mlp, tmp_path, equalize, min_int8_macs,
                                                                passes):
    model = tmp_path / "mlp.keras"
    outlier_mlp.save(model)
    quantize = {"max_accuracy_drop": "1%", "equalize": equalize}
    if min_int8_macs is not None:
        quantize["min_int8_macs"] = min_int8_macs
    report = edgepress.run(edgepress.Recipe.from_dict({
        "name": "mlp", "model": {"path": str(model)},
        "data": {"dataset": "digits", "test_size": 300, "calibration_samples": 100, "check_samples": 50},
        "exports": [{"format": "tflite", "quantize": quantize}], "measure": {"runs": 3, "warmup": 1},
    }), tmp_path / "run")
    final = next(a for a in report.artifacts if a["accuracy_aware"]["role"] == "final")
    assert report.results["quantize"][0]["budget_met"]  # the accuracy budget holds in every case
    share = final["quantization"]["int8_macs"]
    assert (share >= 0.9) == equalize  # equalized: every layer int8; float fallback: the wide layer stays float
    assert report.passed == passes
    if not passes:
        assert final["gates"]["quantize_min_int8_macs"]["value"] == share < 0.5
        with pytest.raises(GateFailed, match="quantize_min_int8_macs >= 50% of MACs in integer kernels"):
            report.check()


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_the_outlier_mlp_reaches_int8_within_half_a_point_with_90_percent_int8_macs(outlier_mlp, digits8, tmp_path,
                                                                                    fmt):
    from edgepress.deploy.coverage import int8_macs

    result = quantize_to_budget(outlier_mlp, fmt, tmp_path, digits8.calibration(100), digits8.x_test, digits8.y_test,
                                max_accuracy_drop="0.5%")
    assert result.full.accuracy_drop > 0.05  # plain int8 breaks it
    assert result.budget_met and result.chosen.accuracy_drop <= 0.005 and result.chosen.float_layers == []
    assert int8_macs(result.chosen.artifact.path)["int8_macs"] >= 0.9


def test_onnx_tries_the_other_calibration_methods_before_any_float_layer(outlier_cnn, digits8, tmp_path):
    result = quantize_to_budget(outlier_cnn, "onnx", tmp_path, digits8.calibration(100), digits8.x_test,
                                digits8.y_test, max_accuracy_drop="1%", equalize=False, bias_correction=False)
    remedies = [t.remedy for t in result.trials]
    first_float = next((i for i, t in enumerate(result.trials) if t.float_layers), len(result.trials))
    tried = [r for r in remedies[:first_float] if r.startswith("calibration")]
    assert remedies[0] == "none" and tried and set(tried) <= {"calibration percentile", "calibration entropy"}
    for trial in result.trials[:first_float]:  # each fully int8, its own file, scored on the same data
        assert trial.float_layers == [] and trial.artifact.path.is_file()
    if not any(t.meets_budget for t in result.trials[:first_float]):
        assert tried == ["calibration percentile", "calibration entropy"]  # both, before keeping layers float
    assert result.to_dict()["trials"][1]["remedy"] == tried[0]
