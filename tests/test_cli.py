"""The CLI on bad input: exit code 2, one clear paragraph, no traceback, nothing half-written.

Commands run in-process through typer's runner (TensorFlow is imported once per session);
`--help` runs in a real subprocess to show it starts without TensorFlow.
"""

import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app

runner = CliRunner()

TINY = {
    "name": "tiny",
    "model": {"zoo": "seed_cnn", "train_epochs": 1},
    "data": {"dataset": "digits", "train_size": 200, "test_size": 50, "calibration_samples": 20},
    "exports": [{"format": "tflite", "precision": "int8"}],
    "measure": {"runs": 3, "warmup": 1},
}


def _recipe(tmp_path, **changes) -> str:
    recipe = {**TINY, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _run_refused(tmp_path, *args) -> str:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(p.is_file() and ".tmp-" in p.name for p in out.rglob("*"))
    return " ".join(result.output.split())


def test_help_is_instant_and_imports_no_tensorflow():
    code = "import sys; from edgepress.cli import main; sys.argv=['edgepress','--help']\n" \
           "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'tensorflow' not in sys.modules, 'TF imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "run" in done.stdout and "schema" in done.stdout


def test_models_lists_the_zoo():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "seed_cnn" in result.output and "seed_mlp" in result.output


def test_unknown_recipe_key(tmp_path):
    message = _run_refused(tmp_path, _recipe(tmp_path, measure={"runz": 3}))
    assert "unknown key 'measure.runz'" in message and "runs, warmup, threads" in message


def test_missing_model_file(tmp_path):
    message = _run_refused(tmp_path, _recipe(tmp_path), "--model", str(tmp_path / "nope.keras"))
    assert "nope.keras" in message


def test_corrupt_model_file(tmp_path):
    (tmp_path / "broken.keras").write_bytes(b"not a model at all")
    message = _run_refused(tmp_path, _recipe(tmp_path), "--model", str(tmp_path / "broken.keras"))
    assert "broken.keras" in message


def test_data_that_does_not_fit_the_model(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((60, 5), np.float32), y=np.zeros(60, np.int64))
    message = _run_refused(tmp_path, _recipe(tmp_path, data={"dataset": "npz", "train_size": 40}),
                           "--data", str(tmp_path / "d.npz"))
    assert "(5)" in message and "(28, 28, 1)" in message


def test_empty_calibration_set(tmp_path, trained_cnn):
    trained_cnn.save(tmp_path / "m.keras")
    recipe = _recipe(tmp_path, data={"dataset": "digits", "train_size": 0, "test_size": 50})
    message = _run_refused(tmp_path, recipe, "--model", str(tmp_path / "m.keras"))
    assert "calibration set is empty" in message


@pytest.mark.parametrize("step", ["prune", "qat"])
def test_layer_tfmot_cannot_handle_is_named(tmp_path, prelu_cnn, step):
    prelu_cnn.save(tmp_path / "prelu.keras")
    exports = [{"format": "tflite", "precision": "int8"}]
    recipe = _recipe(tmp_path, steps=[{"type": step}], exports=exports)
    message = _run_refused(tmp_path, recipe, "--model", str(tmp_path / "prelu.keras"))
    # prune suggests the layers it can prune; qat every layer but the one tfmot refuses (they stay float).
    suggested = re.search(r"layers: \[([^\]]*)\]", message).group(1).split(", ")
    assert "'prelu' (PReLU)" in message and suggested[0] == "conv" and suggested[-1] == "logits"
    assert "prelu" not in suggested and len(suggested) == (2 if step == "prune" else 4)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_gate_failure_exits_1_and_names_the_gate(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", _recipe(tmp_path, gates={"max_bytes": 1000}), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "max_bytes" in result.output and "tiny_int8.tflite" in result.output
    assert (out / "results.json").is_file()  # the measured results are kept


def test_quantize_data_kind_follows_the_file(tmp_path):
    from edgepress.cli import _dataset_of

    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28)), y_train=np.zeros(2))  # keras' layout
    np.savez(tmp_path / "mine.npz", x=np.zeros((2, 4)), y=np.zeros(2))
    assert _dataset_of(str(tmp_path / "mnist.npz")) == ("mnist", str(tmp_path / "mnist.npz"))
    assert _dataset_of(str(tmp_path / "mine.npz")) == ("npz", str(tmp_path / "mine.npz"))
    assert _dataset_of("digits") == ("digits", None)
    assert _dataset_of("data/mnist") == ("mnist", "data/mnist")
