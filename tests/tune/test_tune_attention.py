"""The tune on an attention model (issue 23): it also exports TFLite int8 with the LayerNorm and attention ops float
(`float_ops`, at a dynamic batch and at batch 1), which a CNN does not get; and with `tune.validation_size` its
trials are scored on samples held out of the training split, not on the test split, whose accuracy the pick still
reports. One real tune of the tiny Keras 3 encoder on the digits (no pruning: its trial is exports only)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import edgepress
from edgepress.cli import app
from edgepress.devices import load_device
from edgepress.models.datasets import load_dataset
from edgepress.specs.tune import TuneSpec
from edgepress.tune.space import FLOAT_OPS_CHOICES, Space, choice_of_row, export_of_row
from edgepress.tune.study import _float_op_kinds
from tests.models.encoders import keras3_encoder

DATA = {"dataset": "digits", "train_size": 600, "test_size": 200, "calibration_samples": 50}
VALIDATION = 150
CHOICES = ["tflite:fp32", "tflite:int8", *FLOAT_OPS_CHOICES]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("encoder") / "encoder.keras"
    return path, keras3_encoder(path)


def _recipe(model: Path, **tune) -> dict:
    return {"name": "enc", "model": {"path": str(model)}, "data": DATA, "targets": ["x86-host"],
            "measure": {"runs": 10, "warmup": 2, "threads": 1, "target_ci_width": None},
            "gates": {"max_accuracy_drop": 0.5},
            "tune": {"trials": 1, "space": {"ratio": [0, 0], "precisions": CHOICES, "accuracy_aware": False}, **tune}}


@pytest.fixture(scope="module")
def tuned(encoder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tune") / "out"
    result = edgepress.tune(edgepress.Recipe.from_dict(_recipe(encoder[0], validation_size=VALIDATION)), run_dir)
    return result, run_dir


def test_an_attention_model_is_offered_int8_with_its_attention_float_and_a_cnn_is_not(encoder):
    kinds = _float_op_kinds(edgepress.Recipe.from_dict(_recipe(encoder[0])))
    assert kinds == ["layernorm", "attention"]
    assert _float_op_kinds(edgepress.Recipe.from_dict({**_recipe(encoder[0]), "model": {"zoo": "seed_cnn"}})) == []
    device = load_device("x86-host")
    attention = Space.of(TuneSpec(), [device], 0.01, None, kinds).exports["x86-host"]
    cnn = Space.of(TuneSpec(), [device], 0.01, None, []).exports["x86-host"]
    assert set(FLOAT_OPS_CHOICES) <= set(attention) and not set(FLOAT_OPS_CHOICES) & set(cnn)
    assert [c for c in attention if c not in FLOAT_OPS_CHOICES] == cnn
    off = TuneSpec.model_validate({"space": {"float_ops": False}})
    assert Space.of(off, [device], 0.01, None, kinds).exports["x86-host"] == cnn
    listed = TuneSpec.model_validate({"space": {"precisions": ["tflite:int8-float-ops"]}})
    with pytest.raises(edgepress.EdgepressError, match="has no LayerNormalization or MultiHeadAttention"):
        Space.of(listed, [device], 0.01, None, [])


def test_the_trial_exports_int8_with_float_ops_at_both_batches_as_plain_recipe_exports(tuned):
    result, run_dir = tuned
    trial = result.results["trials"][0]
    assert trial["status"] == "complete", trial["reason"]
    ran = json.loads((Path(trial["run_dir"]) / "results.json").read_text())
    exports = ran["recipe"]["exports"]
    fops = ["layernorm", "attention"]
    assert {"format": "tflite", "precision": "int8", "float_ops": fops} in [
        {k: e[k] for k in ("format", "precision", "float_ops")} for e in exports if e.get("float_ops")]
    assert [e["batch_size"] for e in exports if e.get("float_ops")] == [None, 1]
    rows = {r["name"]: r for r in ran["artifacts"]}
    assert sorted(rows) == ["t000_fp32.tflite", "t000_int8.tflite", "t000_int8_float-layernorm-attention.tflite",
                            "t000_int8_float-layernorm-attention_b1.tflite"]
    plain, floated = rows["t000_int8.tflite"], rows["t000_int8_float-layernorm-attention_b1.tflite"]
    assert "float_ops" not in plain["quantization"] and floated["quantization"]["float_ops"] == fops
    assert floated["quantization"]["int8_macs"] < plain["quantization"]["int8_macs"]
    # each row is told apart as the choice that made it, and its export is that choice's plain recipe export
    for name, choice in (("t000_int8.tflite", "tflite:int8"),
                         ("t000_int8_float-layernorm-attention.tflite", "tflite:int8-float-ops"),
                         ("t000_int8_float-layernorm-attention_b1.tflite", "tflite:int8-float-ops-b1")):
        row = {**rows[name], **({"float_ops": fops} if "float" in name else {})}
        assert choice_of_row(row) == choice
        export = export_of_row(row, 0.01)
        assert edgepress.Recipe.from_dict({**ran["recipe"], "exports": [export]}).exports[0].batch_size == (
            1 if name.endswith("_b1.tflite") else None)


def test_a_validation_split_scores_the_trials_and_the_pick_reports_test_accuracy(encoder, tuned):
    result, run_dir = tuned
    data = result.results
    assert data["validation"] == {"size": VALIDATION, "train": 600 - VALIDATION, "test": 200}
    # The source and the trial were measured on the last 150 training samples: their fp32 files agree with the
    # Keras model there (to a sample), and the trial's run trained and calibrated on the 450 before them.
    split = load_dataset("digits", None, 600, 200).fit_to((8, 8))
    model = encoder[1]

    def keras_accuracy(x, y) -> float:
        return float((np.argmax(model.predict(x, verbose=0), -1) == y).mean())

    validation = keras_accuracy(split.x_train[-VALIDATION:], split.y_train[-VALIDATION:])
    test = keras_accuracy(split.x_test, split.y_test)
    assert abs(validation - test) >= 2 / VALIDATION  # the two splits tell apart which one was scored
    assert abs(data["source"]["accuracy"] - validation) <= 1 / VALIDATION + 1e-9
    fp32 = next(r for r in data["trials"][0]["rows"] if r["artifact"] == "t000_fp32.tflite")
    assert abs(fp32["accuracy"] - validation) <= 1 / VALIDATION + 1e-9
    trial = json.loads((Path(data["trials"][0]["run_dir"]) / "results.json").read_text())["recipe"]["data"]
    assert (trial["train_size"], trial["test_size"]) == (600 - VALIDATION, VALIDATION)
    best = data["best"]["x86-host"]
    assert best["test_run"] and abs(best["test_accuracy"] - best["accuracy"]) > 0
    tested = json.loads((Path(best["test_run"]) / "results.json").read_text())
    assert tested["artifacts"][0]["metrics"]["accuracy"] == best["test_accuracy"]
    again = yaml.safe_load(Path(best["recipe"]).read_text())
    assert (again["data"]["train_size"], again["data"]["test_size"], again["data"]["dataset"]) == (450, 200, "digits")


def test_a_validation_split_that_leaves_no_training_data_exits_2(encoder, tmp_path):
    recipe = tmp_path / "tune.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(encoder[0], validation_size=600)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["tune", str(recipe), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "validation_size 600 leaves no training data" in result.output and "Traceback" not in result.output
    assert not out.exists()
