"""The shipped recipes, run in full on real data. `ci` marks the one the default test run includes."""

import json

import pytest
from typer.testing import CliRunner

from edgepress.cli import app
from tests.conftest import MNIST, REPO

runner = CliRunner()


@pytest.mark.slow
@pytest.mark.ci
def test_mnist_cnn_recipe_on_real_mnist(tmp_path):
    result = runner.invoke(app, ["run", str(REPO / "recipes" / "mnist_cnn.yaml"), "--data", str(MNIST),
                                 "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"] == {"dataset": "mnist", "train_samples": 8000, "test_samples": 2000,
                               "calibration_samples": 200}
    source = results["source"]["metrics"]["accuracy"]
    keras_exported = results["models"][-1]["accuracy"]  # the Keras model the artifacts were exported from
    assert source > 0.96
    artifacts = {(a["format"], a["precision"]): a for a in results["artifacts"]}
    assert len(artifacts) == 8
    fp32 = artifacts["tflite", "fp32"]["metrics"]["accuracy"]
    assert abs(fp32 - keras_exported) <= 0.001
    for key in [("tflite", "dynamic"), ("tflite", "int8"), ("tflite", "int16x8"), ("onnx", "int8_dynamic"),
                ("onnx", "int8_static")]:
        assert artifacts[key]["metrics"]["accuracy_drop"] <= 0.01, key
    assert results["passed"] and results["best"]


@pytest.mark.slow
def test_demo_on_digits(tmp_path):
    result = runner.invoke(app, ["demo", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"]["dataset"] == "digits" and results["source"]["metrics"]["accuracy"] > 0.9
    assert len(results["artifacts"]) == 8 and results["passed"]
