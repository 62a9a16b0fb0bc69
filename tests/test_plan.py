"""The plan: every refusal before the run directory exists, and inputs with unknown dimensions fixed."""

import json

import numpy as np
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.recipe import Recipe

runner = CliRunner()


def _dynamic_onnx(path):
    """A small CNN exported with a dynamic batch and dynamic height and width: input (?, ?, ?, 1)."""
    import tf2onnx

    from edgepress.compat import keras, tensorflow

    k, tf = keras(), tensorflow()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((None, None, 1)), k.layers.Conv2D(8, 3, activation="relu"),
                          k.layers.GlobalAveragePooling2D(), k.layers.Dense(10)])
    spec = (tf.TensorSpec((None, None, None, 1), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    return path


def test_an_onnx_model_with_dynamic_dimensions_runs_with_input_shape(tmp_path):
    model = _dynamic_onnx(tmp_path / "dynamic.onnx")
    recipe = {"name": "dyn", "model": {"path": str(model), "input_shape": [8, 8, 1]},
              "data": {"dataset": "digits", "test_size": 50, "calibration_samples": 10},
              "exports": [{"format": "onnx", "precision": "fp32"}, {"format": "onnx", "precision": "int8_static"}],
              "measure": {"runs": 3, "warmup": 1}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = runner.invoke(app, ["run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {a["precision"] for a in results["artifacts"]} == {"fp32", "int8_static"}
    assert results["source"]["kind"] == "onnx"
    fp32 = next(a for a in results["artifacts"] if a["precision"] == "fp32")
    assert fp32["metrics"]["agreement"] == 1.0  # the export is the model as given, run at 8x8


def test_a_refused_recipe_leaves_no_run_directory(tmp_path):
    model = _dynamic_onnx(tmp_path / "dynamic.onnx")
    recipe = {"model": {"path": str(model), "input_shape": [8, 8, 1]}, "data": {"dataset": "digits"},
              "steps": [{"type": "structured_prune"}], "exports": [{"format": "onnx", "precision": "fp32"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = runner.invoke(app, ["run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "structured_prune" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_a_run_directory_that_is_a_file_is_refused_before_training(tmp_path):
    from edgepress.errors import EdgepressError
    from edgepress.plan import make_plan

    blocker = tmp_path / "taken"
    blocker.write_text("")
    recipe = Recipe.from_dict({"model": {"zoo": "seed_cnn"}, "data": {"dataset": "digits"}})
    for run_dir, message in ((blocker, "is an existing file"), (blocker / "run", "is a file, not a folder")):
        try:
            make_plan(recipe, run_dir)
        except EdgepressError as e:
            assert message in str(e)
        else:
            raise AssertionError(f"{run_dir} was accepted")


def test_the_plan_checks_steps_on_the_zoo_build_before_training(tmp_path):
    from edgepress.errors import EdgepressError
    from edgepress.plan import make_plan

    recipe = Recipe.from_dict({"model": {"zoo": "seed_cnn", "train_epochs": 50}, "data": {"dataset": "digits"},
                               "steps": [{"type": "qat", "layers": ["no_such_layer"]}]})
    try:
        make_plan(recipe, tmp_path / "run")  # refused in a second: the 50 epochs never start
    except EdgepressError as e:
        assert "no_such_layer" in str(e)
    else:
        raise AssertionError("the qat step on an unknown layer was accepted")
    assert not (tmp_path / "run").exists()


def test_a_plan_takes_calibration_once_and_names_every_artifact(tmp_path):
    from edgepress.plan import make_plan

    recipe = Recipe.from_dict({
        "name": "n", "model": {"zoo": "seed_mlp"}, "data": {"dataset": "digits", "calibration_samples": 30},
        "exports": [{"format": "tflite", "precision": "int8", "batch_size": 1},
                    {"format": "tflite", "precision": "fp16", "sparse": True},
                    {"format": "onnx", "precision": "int8_static"}]})
    plan = make_plan(recipe, tmp_path / "run")
    assert [e.path.name for e in plan.exports] == ["n_int8_b1.tflite", "n_fp16_sparse.tflite", "n_int8_static.onnx"]
    assert len(plan.calibration) == 30 and np.array_equal(plan.calibration, plan.export_data.x_train[:30])
    assert not (tmp_path / "run").exists()


def test_models_import_nothing_above_them():
    import ast
    from pathlib import Path

    import edgepress.models

    above = ("edgepress.recipe", "edgepress.api", "edgepress.plan", "edgepress.report", "edgepress.deploy",
             "edgepress.compress", "edgepress.cli", "edgepress.tune")
    found = []
    for path in Path(edgepress.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.name}: {n}" for n in names if n.startswith(above)]
    assert not found, found
