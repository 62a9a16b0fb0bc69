"""A Keras 3 model with its own registered layer (a learned position embedding): loaded, stepped and exported when
the model is trusted and the recipe names the module that defines the layer (`model.custom_objects`); refused
without running that module's code when it is not trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from typer.testing import CliRunner

from edgepress.cli import app

cli = CliRunner()
LAYERS = '''
import pathlib
import keras

pathlib.Path(__file__).with_name("imported.marker").write_text("the module ran")


@keras.saving.register_keras_serializable(package="{package}")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per token position."""

    def build(self, input_shape):
        self.position = self.add_weight(shape=tuple(input_shape[1:]), initializer="random_normal", name="position")

    def call(self, x):
        return x + self.position
'''
BUILD = '''
import importlib
import sys
import keras

layers = importlib.import_module(sys.argv[2])

keras.utils.set_random_seed(0)
inputs = keras.Input((8, 8))
x = layers.PositionEmbedding()(keras.layers.Dense(16)(inputs))
x = keras.layers.MultiHeadAttention(2, 8, name="mha")(x, x)
outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling1D()(x))
keras.Model(inputs, outputs).save(sys.argv[1])
'''
DIGITS = {"dataset": "digits", "train_size": 200, "test_size": 40, "calibration_samples": 10, "check_samples": 10}


def _model_with_a_custom_layer(tmp_path) -> tuple:
    """The model file and the name of the module of its layer (its own per test: Keras registers classes for the
    whole process, and a module imported stays imported)."""
    module = f"edgepress_test_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(LAYERS.replace("{package}", module))
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / "m.keras"), module], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (tmp_path / "imported.marker").unlink()  # building it imported the module; loading must not, untrusted
    return tmp_path / "m.keras", module


def _recipe(tmp_path, model, **extra):
    recipe = {"name": "custom", "model": {"path": str(model), **extra}, "data": DIGITS,
              "steps": [{"type": "structured_prune", "ratio": 0.5, "fine_tune_epochs": 1}],
              "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "onnx", "precision": "fp32"}],
              "measure": {"runs": 3, "warmup": 1, "target_ci_width": None}}
    path = tmp_path / f"recipe{len(extra)}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_trusted_model_with_its_layer_module_named_loads_steps_and_exports(tmp_path, monkeypatch):
    model, module = _model_with_a_custom_layer(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = _recipe(tmp_path, model, custom_objects=[module])

    refused = cli.invoke(app, ["run", str(recipe), "-o", str(tmp_path / "untrusted")])
    message = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert f"model.custom_objects asks to import {module}" in message and "--trust-model" in message
    assert not (tmp_path / "imported.marker").exists() and not (tmp_path / "untrusted").exists()

    result = cli.invoke(app, ["run", str(recipe), "--trust-model", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "imported.marker").exists()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["source"]["kind"] == "keras3"
    assert results["models"][1]["params"] < results["models"][0]["params"]  # a head went
    for row in results["artifacts"]:
        assert row["check"]["top1_agreement"] == 1.0 and row["latency"]["p50"] > 0


def test_a_custom_layer_is_refused_untrusted_without_running_its_module(tmp_path, monkeypatch):
    model, _ = _model_with_a_custom_layer(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = cli.invoke(app, ["run", str(_recipe(tmp_path, model)), "-o", str(tmp_path / "run")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "PositionEmbedding" in message
    assert not (tmp_path / "imported.marker").exists() and not (tmp_path / "run").exists()
    # Trusted, but with no module named for the layer: refused, saying how to name it (nothing imported).
    result = cli.invoke(app, ["run", str(_recipe(tmp_path, model)), "--trust-model", "-o", str(tmp_path / "run")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "model.custom_objects" in message and "PositionEmbedding" in message
    assert not (tmp_path / "imported.marker").exists()
