"""Models out in the Keras they came in, and every model a run saves loads again.

A Keras 3 model in gives Keras 3 files in models/ that plain Keras 3 (a process without TF_USE_LEGACY_KERAS)
loads with safe_mode=True and that predict what edgepress's own models predicted, whether the step worked on the
Keras 3 model natively (structured_prune, prune) or on its tf_keras rebuild (cluster: through the bridge); a run's
QAT model (tfmot wrappers, tf_keras .h5) is model input for another run that exports it to TFLite int8.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import keras as keras3  # Keras 3 (conftest imported edgepress first, which sets TF_USE_LEGACY_KERAS)
import numpy as np
import yaml
from typer.testing import CliRunner

import edgepress
from edgepress.cli import app
from edgepress.compat import keras as tf_keras_module
from edgepress.models.bridge import CONVERT_TOLERANCE, to_keras3
from edgepress.models.loading import load_model, open_model
from edgepress.models.source import wrap

cli = CliRunner()
DIGITS = {"dataset": "digits", "train_size": 300, "test_size": 60, "calibration_samples": 20, "check_samples": 20}
FEW_RUNS = {"runs": 3, "warmup": 1}

# Loads each file with plain Keras 3 and prints its predictions on the saved inputs, as a Keras 3 user would.
PLAIN_KERAS3 = """
import json, sys
import numpy as np
import keras
x = np.load(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    model = keras.models.load_model(path, safe_mode=True)
    out[path] = model.predict(x, verbose=0).tolist()
print(json.dumps({"keras": keras.__version__, "outputs": out}))
"""


def _keras3_cnn(path):
    """A small Keras 3 functional CNN with BatchNormalization, saved as a Keras 3 .keras file."""
    keras3.utils.set_random_seed(0)
    inputs = keras3.Input((28, 28, 1))
    # Named layers: Keras numbers default names per process, so "dense" would be "dense_1" after other tests.
    x = keras3.layers.Conv2D(8, 3, activation="relu", name="conv2d")(inputs)
    x = keras3.layers.BatchNormalization(name="batch_normalization")(x)
    x = keras3.layers.MaxPooling2D(name="max_pooling2d")(x)
    x = keras3.layers.Flatten(name="flatten")(x)
    outputs = keras3.layers.Dense(10, name="dense")(x)
    model = keras3.Model(inputs, outputs, name="k3_cnn")
    model.save(path)
    return model


def _plain_keras3(x: np.ndarray, paths, tmp_path) -> dict:
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run([sys.executable, "-c", PLAIN_KERAS3, str(tmp_path / "x.npy"), *map(str, paths)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_keras3_model_in_gives_keras3_models_out(tmp_path, digits):
    source = tmp_path / "k3.keras"
    _keras3_cnn(source)
    assert open_model(source).kind == "keras3"
    recipe = edgepress.Recipe.from_dict({
        "name": "k3", "model": {"path": str(source)}, "data": DIGITS,
        "steps": [{"type": "structured_prune", "ratio": 0.5, "fine_tune_epochs": 1},  # natively, on Keras 3
                  {"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1}],  # natively too (prune_native)
        "exports": [{"format": "tflite", "precision": "fp32"}], "measure": FEW_RUNS,
    })
    report = edgepress.run(recipe, tmp_path / "run")
    models = tmp_path / "run" / "models"
    written = [models / "0-source.keras", models / "1-structured_prune.keras", models / "2-prune.keras"]
    for stage, path in zip(report.results["models"], written, strict=True):
        manifest = json.loads(path.with_name(path.name + ".json").read_text())
        assert manifest["keras"] == f"keras {keras3.__version__}" and manifest["note"] is None
        assert stage["file"] == manifest
        assert json.loads(zipfile.ZipFile(path).read("metadata.json"))["keras_version"].startswith("3.")
    assert report.results["models"][1]["params"] < report.results["models"][0]["params"]  # channels removed

    # What edgepress's own models predict (the Keras 3 files read back by edgepress, natively)...
    x = digits.x_test[:16]
    expected = [load_model(path).predict(x, verbose=0) for path in written]
    # ...and what plain Keras 3 predicts from the same files, in a process without TF_USE_LEGACY_KERAS.
    plain = _plain_keras3(x, written, tmp_path)
    assert plain["keras"].startswith("3.")
    for path, want in zip(written, expected, strict=True):
        got = np.asarray(plain["outputs"][str(path)])
        assert np.max(np.abs(got - want)) < CONVERT_TOLERANCE
    # The Keras 3 file after prune is the pruned model: half of its Dense kernel is zeros.
    kernel = keras3.models.load_model(written[2], safe_mode=True).get_layer("dense").get_weights()[0]
    assert np.mean(kernel == 0) >= 0.45


def test_conversion_keeps_weights_identical(trained_cnn):
    converted = to_keras3(trained_cnn)
    assert type(converted).__module__.startswith("keras.")
    for mine, theirs in zip(trained_cnn.get_weights(), converted.get_weights(), strict=True):
        assert np.array_equal(mine, theirs)


def test_a_tf_keras_source_gives_tf_keras_files(tmp_path, trained_cnn):
    path = tmp_path / "m.keras"
    trained_cnn.save(path)
    source = open_model(path)
    assert source.kind == "tf_keras" and wrap(trained_cnn).kind == "tf_keras"
    info = source.save(tmp_path / "out.keras", like=source.kind)
    assert info["keras"] == f"tf_keras {tf_keras_module().__version__}"
    assert load_model(tmp_path / "out.keras").count_params() == trained_cnn.count_params()


def test_a_runs_qat_model_is_model_input_and_exports_to_int8(tmp_path):
    first = {
        "name": "qat", "model": {"zoo": "seed_cnn", "train_epochs": 1}, "data": DIGITS,
        "steps": [{"type": "qat", "fine_tune_epochs": 1}],
        "exports": [{"format": "tflite", "precision": "int8"}], "measure": FEW_RUNS,
    }
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(first))
    result = cli.invoke(app, ["run", str(tmp_path / "first.yaml"), "-o", str(tmp_path / "first")])
    assert result.exit_code == 0, result.output
    qat_file = tmp_path / "first" / "models" / "1-qat.h5"
    manifest = json.loads((tmp_path / "first" / "models" / "1-qat.h5.json").read_text())
    assert manifest["keras"].startswith("tf_keras") and "quantize-aware" in manifest["note"]

    again = {**first, "name": "again", "steps": []}
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(again))
    result = cli.invoke(app, ["run", str(tmp_path / "again.yaml"), "--model", str(qat_file),
                              "-o", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "again" / "results.json").read_text())
    (row,) = results["artifacts"]
    assert row["precision"] == "int8" and row["check"]["top1_agreement"] > 0.9
    assert results["source"]["metrics"]["accuracy"] == results["models"][0]["accuracy"]
    reloaded = load_model(qat_file)
    assert any(type(layer).__name__ == "QuantizeWrapperV2" for layer in reloaded.layers)


def test_the_allow_list_gives_tfmot_classes_only_to_files_that_use_nothing_else():
    """tfmot's classes come by name from tfmot's own registries, and only when every custom object is one."""
    import contextlib

    from edgepress.models.trust import tfmot_scope

    tfmot_module = "tensorflow_model_optimization.python.core.quantization.keras.quantize_layer"
    ours = {"layers": [{"class_name": "QuantizeLayer", "module": tfmot_module, "config": {}}]}
    elsewhere = {"layers": [{"class_name": "QuantizeLayer", "module": "evil.module", "config": {}}]}
    mixed = {"layers": [*ours["layers"], {"class_name": "MyLayer", "module": "my.layers", "config": {}}]}
    assert not isinstance(tfmot_scope(ours), contextlib.nullcontext)
    for config in (elsewhere, mixed, {"layers": []}, None):
        assert isinstance(tfmot_scope(config), contextlib.nullcontext)
    with tfmot_scope(ours):
        assert tf_keras_module().utils.get_registered_object("QuantizeLayer") is not None


def _keras3_encoder(path):
    """A small Keras 3 attention encoder on 8 rows of 8 digit pixels: LayerNormalization, MultiHeadAttention (called
    on two tensors, which tf_keras cannot rebuild), residual Adds, a ReLU MLP; trained a little so it predicts."""
    keras3.utils.set_random_seed(0)
    inputs = keras3.Input((8, 8))
    x = keras3.layers.Dense(16)(inputs)
    h = keras3.layers.LayerNormalization()(x)
    h = keras3.layers.MultiHeadAttention(2, 8, name="b1_mha")(h, h)
    x = keras3.layers.Add()([x, h])
    h = keras3.layers.Dense(32, activation="relu")(keras3.layers.LayerNormalization()(x))
    x = keras3.layers.Add()([x, keras3.layers.Dense(16)(h)])
    outputs = keras3.layers.Dense(10)(keras3.layers.GlobalAveragePooling1D()(x))
    model = keras3.Model(inputs, outputs, name="k3_encoder")
    model.save(path)
    return model


def test_a_keras3_attention_model_exports_natively_to_tflite_and_onnx(tmp_path):
    """No rebuild: the Keras 3 model itself is converted (its concrete function for TFLite, tf2onnx from the same
    function for ONNX), and every file is checked against it and measured."""
    source = tmp_path / "encoder.keras"
    encoder = _keras3_encoder(source)
    exports = [{"format": "tflite", "precision": p} for p in ("fp32", "dynamic", "int8")]
    exports += [{"format": "onnx", "precision": p} for p in ("fp32", "int8_static")]
    recipe = edgepress.Recipe.from_dict({"name": "enc", "model": {"path": str(source)}, "data": DIGITS,
                                         "exports": exports, "measure": FEW_RUNS})
    report = edgepress.run(recipe, tmp_path / "run")
    assert report.results["source"]["kind"] == "keras3"
    rows = {(a["format"], a["precision"]): a for a in report.artifacts}
    assert set(rows) == {(e["format"], e["precision"]) for e in exports}
    for row in rows.values():
        assert row["latency"]["p50"] > 0 and row["metrics"]["accuracy"] is not None
        assert row["check"]["samples"] == DIGITS["check_samples"]
    for key in (("tflite", "fp32"), ("onnx", "fp32")):  # float files compute what the Keras 3 model computes
        assert rows[key]["check"]["top1_agreement"] == 1.0 and rows[key]["check"]["max_abs_diff"] < 1e-4
    assert rows[("tflite", "int8")]["quantization"]["int8_macs"] > 0.5
    manifest = json.loads((tmp_path / "run" / "models" / "0-source.keras.json").read_text())
    assert manifest["keras"] == f"keras {keras3.__version__}"  # written by Keras 3, not converted
    x = np.random.default_rng(0).random((4, 8, 8)).astype("float32")
    np.testing.assert_allclose(load_model(tmp_path / "run" / "models" / "0-source.keras").predict(x, verbose=0),
                               encoder.predict(x, verbose=0), atol=1e-6)


def test_a_tfmot_step_on_a_keras3_model_tf_keras_cannot_rebuild_is_refused_before_training(tmp_path):
    source = tmp_path / "encoder.keras"
    _keras3_encoder(source)
    recipe = tmp_path / "cluster.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "enc", "model": {"path": str(source)}, "data": DIGITS,
        "steps": [{"type": "structured_prune", "ratio": 0.25, "fine_tune_epochs": 1},
                  {"type": "cluster", "fine_tune_epochs": 1}],
        "exports": [{"format": "tflite", "precision": "fp32"}], "measure": FEW_RUNS,
    }))
    result = cli.invoke(app, ["run", str(recipe), "-o", str(tmp_path / "run")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "step 2 cluster needs tfmot" in message and "'b1_mha' (MultiHeadAttention)" in message
    assert "The steps that work on it as it is: distill, equalize, prune, structured_prune" in message
    assert not (tmp_path / "run").exists()  # refused by the plan: nothing trained, nothing written
