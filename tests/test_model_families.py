"""Every model family through the whole pipeline, each from its shipped recipe made CI-sized.

MLP, LSTM and the raw tf.Module on real MNIST, the GRU language model on Python's own standard
library, a PyTorch CNN through ONNX. Each fixture runs `recipes/<name>.yaml` with fewer samples,
epochs and timed runs (well under a minute each); `test_recipes_slow.py`-style full runs are at the end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import edgepress
from edgepress.cli import app
from edgepress.errors import EdgepressError, GateFailed
from edgepress.report import Report
from tests.conftest import MNIST, REPO

# Four epochs of 2,000 images at a higher learning rate. The MNIST test set's first half is cleaner than
# its second, which the last 500 images (the test split) come from: a small MLP reaches ~80% on them.
MLP_TRAINING = {"train_epochs": 4, "batch_size": 64, "learning_rate": 0.003}
SMALL_MNIST = {"train_size": 2000, "test_size": 500, "calibration_samples": 50, "check_samples": 50}
FEW_RUNS = {"runs": 10, "warmup": 2}

cli = CliRunner()


def ci_sized(name: str, **changes) -> edgepress.Recipe:
    """recipes/<name>.yaml with sections merged from `changes` (a dict updates a section, a list replaces it)."""
    raw = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
    if "path" in changes.get("model", {}):  # a model file instead of the recipe's zoo model
        raw["model"] = {k: v for k, v in raw["model"].items() if k != "zoo"}
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return edgepress.Recipe.from_dict(raw, base=REPO / "recipes")


def artifacts_by(report: Report) -> dict[str, dict]:
    return {f"{a['format']} {a['precision']}": a for a in report.artifacts}


def tflite_ops(path) -> set[str]:
    from ai_edge_litert.interpreter import Interpreter

    return {op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()}


def refused(tmp_path, recipe: edgepress.Recipe, *fragments: str) -> str:
    """Run `recipe`; it must raise EdgepressError naming every fragment, with no run directory made."""
    run_dir = tmp_path / "refused"
    with pytest.raises(EdgepressError) as e:
        edgepress.run(recipe, run_dir)
    message = " ".join(str(e.value).split())
    for fragment in fragments:
        assert fragment in message, message
    assert not run_dir.exists()
    return message


# -- 1. MLP: prune, QAT, every export -------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    steps = [{"type": "distill", "student": {"width": 0.5}, "epochs": 4, "batch_size": 64, "learning_rate": 0.003},
             {"type": "prune", "target_sparsity": 0.7, "fine_tune_epochs": 2, "batch_size": 64}]
    recipe = ci_sized("mnist_mlp", model=MLP_TRAINING, data=SMALL_MNIST, measure=FEW_RUNS, steps=steps)
    return edgepress.run(recipe, tmp_path_factory.mktemp("mlp"))


def test_mlp_is_distilled_pruned_and_exported_in_every_precision(mlp):
    found = artifacts_by(mlp)
    assert set(found) == {"tflite fp32", "tflite fp16", "tflite dynamic", "tflite int8", "tflite int16x8",
                          "onnx fp32", "onnx fp16", "onnx int8_dynamic", "onnx int8_static"}
    source, student, pruned = mlp.results["models"]
    assert source["accuracy"] > 0.75 and student["accuracy"] > 0.7
    assert student["params"] == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10  # half the units of each hidden layer
    assert pruned["sparsity"] >= 0.65
    for key in ("tflite fp32", "onnx fp32"):
        assert found[key]["metrics"]["accuracy"] == pytest.approx(pruned["accuracy"], abs=0.004)
    for a in found.values():  # every precision computes nearly what the pruned Keras model does
        assert abs(a["metrics"]["accuracy"] - pruned["accuracy"]) <= 0.03, a["name"]
    # 70% zeros: the gzip of the float file is well under half of its size.
    assert found["tflite fp32"]["gzip_bytes"] < 0.5 * found["tflite fp32"]["bytes"]


def test_mlp_with_quantization_aware_training(tmp_path):
    recipe = ci_sized("mnist_mlp_qat", model=MLP_TRAINING, data=SMALL_MNIST,
                      measure=FEW_RUNS, steps=[{"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1},
                                               {"type": "qat", "fine_tune_epochs": 1}])
    report = edgepress.run(recipe, tmp_path)
    assert [m["stage"] for m in report.results["models"]] == ["source", "prune", "qat"]
    found = artifacts_by(report)
    assert set(found) == {"tflite int8", "tflite dynamic", "onnx fp32"}
    qat_accuracy = report.results["models"][-1]["accuracy"]
    assert qat_accuracy > 0.75
    assert found["tflite int8"]["metrics"]["accuracy"] == pytest.approx(qat_accuracy, abs=0.02)


# -- 2. LSTM reading MNIST row by row ------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    recipe = ci_sized("mnist_lstm", model={"train_epochs": 3, "batch_size": 32, "learning_rate": 0.003},
                      data=SMALL_MNIST, measure=FEW_RUNS,
                      steps=[{"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1, "batch_size": 32}])
    return edgepress.run(recipe, tmp_path_factory.mktemp("lstm"))


def test_lstm_tflite_has_the_fused_op_at_a_static_shape(lstm):
    found = artifacts_by(lstm)
    assert lstm.results["source"]["metrics"]["accuracy"] > 0.5
    for precision in ("fp32", "dynamic", "int8"):
        a = found[f"tflite {precision}"]
        assert a["name"].endswith("_b1.tflite")
        assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in tflite_ops(a["path"]), precision
        manifest = json.loads(open(a["path"] + ".json").read())
        assert manifest["inputs"][0]["shape"] == [1, 28, 28]
    assert found["tflite int8"]["quantization"]["calibration_samples"] == 50
    assert found["tflite dynamic"]["bytes"] < 0.5 * found["tflite fp32"]["bytes"]


def test_lstm_tflite_runs_every_sample_from_a_fresh_state(lstm):
    # The fused LSTM keeps its state in variable tensors; unless the runner resets them, each sample
    # would start from the last one's state and the fp32 file would disagree with the Keras model.
    pruned_accuracy = lstm.results["models"][-1]["accuracy"]
    fp32 = artifacts_by(lstm)["tflite fp32"]
    assert fp32["check"]["top1_agreement"] == 1.0 and fp32["check"]["max_abs_diff"] < 1e-4
    assert fp32["metrics"]["accuracy"] == pytest.approx(pruned_accuracy, abs=0.004)


def test_lstm_onnx_and_pruned_lstm_kernels(lstm):
    import onnx

    from edgepress.models.loading import load_model

    found = artifacts_by(lstm)
    assert "LSTM" in {n.op_type for n in onnx.load(found["onnx fp32"]["path"]).graph.node}
    assert {"onnx int8_dynamic", "onnx int8_static"} <= set(found)
    pruned = load_model(lstm.run_dir / "models" / "1-prune.keras")
    kernel, recurrent, _ = pruned.layers[0].get_weights()
    assert np.mean(kernel == 0) >= 0.45 and np.mean(recurrent == 0) >= 0.45


# -- 3. GRU character language model -------------------------------------------------------------


@pytest.fixture(scope="module")
def char_gru(tmp_path_factory):
    recipe = ci_sized("python_char_gru", model={"train_epochs": 2}, measure=FEW_RUNS,
                      data={"train_size": 1500, "test_size": 200, "check_samples": 20},
                      gates={"max_accuracy_drop": "1%", "max_perplexity": 30})
    return edgepress.run(recipe, tmp_path_factory.mktemp("char_gru"))


def test_language_model_is_scored_by_next_character_accuracy_and_perplexity(char_gru):
    source = char_gru.results["source"]["metrics"]
    # Better than knowing nothing (perplexity 97, the vocabulary) and than the most common character.
    assert source["perplexity"] < 30 and source["accuracy"] > 0.2
    assert source["cross_entropy"] == pytest.approx(np.log(source["perplexity"]))
    found = artifacts_by(char_gru)
    assert set(found) == {"tflite fp32", "tflite fp16", "tflite dynamic", "onnx fp32", "onnx int8_dynamic"}
    for key in ("tflite fp32", "onnx fp32"):
        assert found[key]["metrics"]["perplexity"] == pytest.approx(source["perplexity"], rel=1e-3)
    for a in found.values():
        assert a["metrics"]["perplexity"] == pytest.approx(source["perplexity"], rel=0.05), a["name"]
        assert a["gates"]["max_perplexity"]["passed"]
    manifest = json.loads(open(found["tflite dynamic"]["path"] + ".json").read())
    assert manifest["inputs"][0]["shape"] == [1, 64] and manifest["inputs"][0]["dtype"] == "int32"
    assert "| perplexity |" in (char_gru.run_dir / "report.md").read_text()


def test_a_perplexity_gate_fails_naming_the_gate(char_gru):
    results = json.loads(json.dumps(char_gru.results))
    results["gates"]["max_perplexity"] = 1.5  # the verdict is computed again from the rows by check()
    with pytest.raises(GateFailed, match="max_perplexity <= 1.500 failed"):
        Report(results).check()


def test_language_model_int8_tflite_is_refused_before_the_run(char_gru, tmp_path):
    # The converter's calibrator crashes the process on the GRU's WHILE loop: refuse it up front.
    recipe = ci_sized("python_char_gru", model={"path": str(char_gru.run_dir / "models" / "0-source.keras")},
                      exports=[{"format": "tflite", "precision": "int8", "batch_size": 1}])
    refused(tmp_path, recipe, "'gru' (GRU) becomes a WHILE loop", "precision dynamic")


# -- 4. A raw tf.Module saved as a SavedModel ------------------------------------------------------


@pytest.fixture(scope="module")
def raw_module(tmp_path_factory):
    recipe = ci_sized("mnist_raw_module", model=MLP_TRAINING, data=SMALL_MNIST, measure=FEW_RUNS)
    return edgepress.run(recipe, tmp_path_factory.mktemp("raw_module"))


def test_raw_module_is_exported_in_every_post_training_precision(raw_module):
    assert raw_module.results["source"]["kind"] == "saved_model"
    assert (raw_module.run_dir / "models" / "0-source" / "saved_model.pb").is_file()
    source = raw_module.results["source"]["metrics"]["accuracy"]
    assert source > 0.75
    stage = raw_module.results["models"][0]
    assert stage["params"] == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10 and stage["macs"] is None
    found = artifacts_by(raw_module)
    assert {f"tflite {p}" for p in ("fp32", "fp16", "dynamic", "int8", "int16x8")} <= set(found)
    assert {f"onnx {p}" for p in ("fp32", "fp16", "int8_dynamic", "int8_static")} <= set(found)
    for key in ("tflite fp32", "onnx fp32"):
        assert found[key]["metrics"]["accuracy"] == pytest.approx(source, abs=0.002)
    for a in found.values():
        assert abs(a["metrics"]["accuracy"] - source) <= 0.02, a["name"]
    assert found["tflite int8"]["bytes"] < 0.35 * found["tflite fp32"]["bytes"]


def test_a_saved_model_directory_is_model_input(raw_module, tmp_path):
    saved = raw_module.run_dir / "models" / "0-source"
    recipe = ci_sized("mnist_raw_module", model={"path": str(saved)}, data=SMALL_MNIST, measure=FEW_RUNS,
                      exports=[{"format": "tflite", "precision": "int8", "batch_size": 1}])
    report = edgepress.run(recipe, tmp_path)
    assert report.results["source"]["model"] == str(saved)
    assert report.results["source"]["metrics"]["accuracy"] == raw_module.results["source"]["metrics"]["accuracy"]
    (a,) = report.artifacts
    assert a["name"] == "mnist_raw_module_int8_b1.tflite" and a["check"]["top1_agreement"] >= 0.95


def test_steps_on_a_saved_model_are_refused_naming_each(raw_module, tmp_path):
    recipe = ci_sized("mnist_raw_module", model={"path": str(raw_module.run_dir / "models" / "0-source")},
                      steps=[{"type": "prune"}, {"type": "qat"}], exports=[{"format": "tflite", "precision": "int8"}])
    refused(tmp_path, recipe, "prune (tfmot magnitude pruning wraps Keras layers",
            "qat (tfmot quantization-aware training", "plain TensorFlow SavedModel", "Remove them")


# -- 5. A PyTorch CNN: TFLite through litert-torch, ONNX through torch.onnx ------------------------


@pytest.fixture(scope="module")
def torch_cnn(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    recipe = ci_sized("mnist_torch_cnn", model={"train_epochs": 2}, data=SMALL_MNIST, measure=FEW_RUNS)
    return edgepress.run(recipe, tmp_path_factory.mktemp("torch_cnn"))


def test_pytorch_cnn_is_quantized_by_onnxruntime(torch_cnn):
    assert torch_cnn.results["source"]["kind"] == "torch"
    assert (torch_cnn.run_dir / "models" / "0-source.pt2").is_file()
    assert torch_cnn.results["models"][0]["file"]["format"] == "torch"
    source = torch_cnn.results["source"]["metrics"]["accuracy"]
    assert source > 0.6
    found = artifacts_by(torch_cnn)
    assert set(found) == {"onnx fp32", "onnx fp16", "onnx int8_dynamic", "onnx int8_static", "tflite fp32",
                          "tflite int8"}
    assert found["onnx fp32"]["check"]["top1_agreement"] == 1.0
    assert found["onnx fp32"]["metrics"]["accuracy"] == source
    static = found["onnx int8_static"]
    assert static["quantization"]["calibration_samples"] == 50 and static["quantization"]["format"] == "QDQ"
    assert static["bytes"] < 0.35 * found["onnx fp32"]["bytes"]
    assert abs(static["metrics"]["accuracy"] - source) <= 0.03
    assert torch_cnn.results["notes"] == []


def test_pytorch_cnn_tflite_through_litert_torch(torch_cnn):
    source = torch_cnn.results["source"]["metrics"]["accuracy"]
    found = artifacts_by(torch_cnn)
    fp32, int8 = found["tflite fp32"], found["tflite int8"]
    assert fp32["layout"] == "NCHW" and fp32["check"]["top1_agreement"] == 1.0
    assert fp32["metrics"]["accuracy"] == source
    assert int8["layout"] == "NHWC" and int8["name"].endswith("_int8_nhwc.tflite")
    assert int8["quantization"]["quantizer"] == "litert-torch PT2EQuantizer"
    assert int8["quantization"]["calibration_samples"] == 50
    assert abs(int8["metrics"]["accuracy"] - source) <= 0.02
    assert int8["bytes"] < 0.35 * fp32["bytes"]
    manifest = json.loads((torch_cnn.run_dir / "artifacts" / (int8["name"] + ".json")).read_text())
    assert manifest["layout"] == "NHWC" and manifest["inputs"][0]["shape"] == [1, 32, 32, 3]
    assert "| layout |" in (torch_cnn.run_dir / "report.md").read_text()  # NCHW and NHWC rows: the report says


def test_onnx_exports_that_cannot_be_made_are_refused(torch_cnn, tmp_path):
    onnx_file = str(torch_cnn.run_dir / "artifacts" / "mnist_torch_cnn_fp32.onnx")
    tflite_only = ci_sized("mnist_torch_cnn", model={"path": onnx_file}, exports=[{"format": "tflite"}])
    refused(tmp_path, tflite_only, "asks for TFLite exports only", "TFLite export from an .onnx model is not available")
    fixed_batch = ci_sized("mnist_torch_cnn", model={"path": onnx_file},
                           exports=[{"format": "onnx", "precision": "fp32", "batch_size": 1}])
    refused(tmp_path, fixed_batch, "batch_size on onnx fp32", "keeps its own input shape (?, 3, 32, 32)")
    program = str(torch_cnn.run_dir / "models" / "0-source.pt2")
    sparse = ci_sized("mnist_torch_cnn", model={"path": program},
                      exports=[{"format": "tflite", "precision": "fp32", "sparse": True}])
    refused(tmp_path, sparse, "float_layers and sparse are options of Keras TFLite exports")
    keras_layout = ci_sized("mnist_mlp", model={"train_epochs": 1}, data=SMALL_MNIST,
                            exports=[{"format": "tflite", "layout": "NHWC"}])
    refused(tmp_path, keras_layout, "layout chooses the image layout of TFLite files from a PyTorch model")


def test_an_onnx_file_exported_from_pytorch_is_model_input(tmp_path):
    pytest.importorskip("torch")
    from edgepress.models.datasets import load_dataset
    from edgepress.models.torch_cnn import build_torch_cnn, export_torch_onnx, train_torch_cnn

    data = load_dataset("mnist", MNIST, train_size=500, test_size=100).fit_to((3, 32, 32))
    model = train_torch_cnn(build_torch_cnn(), data.x_train, data.y_train, epochs=1)
    path = export_torch_onnx(model, tmp_path / "user_cnn.onnx")
    import torch

    expected = model(torch.from_numpy(data.x_test)).detach().numpy()
    recipe = ci_sized("mnist_torch_cnn", model={"path": str(path)}, data={"train_size": 500, "test_size": 100},
                      measure=FEW_RUNS, exports=[{"format": "onnx", "precision": "fp32"},
                                                 {"format": "onnx", "precision": "int8_dynamic"}])
    report = edgepress.run(recipe, tmp_path / "run")
    accuracy = float(np.mean(expected.argmax(-1) == data.y_test))
    assert report.results["source"]["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert artifacts_by(report)["onnx fp32"]["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert report.results["notes"] == []


# -- Bad input -------------------------------------------------------------------------------------


def _bad_recipe(tmp_path, **model) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bad", "model": model,
        "data": {"dataset": "mnist", "path": str(MNIST), "train_size": 100, "test_size": 50},
        "exports": [{"format": "tflite", "precision": "fp32"}], "measure": {"runs": 2, "warmup": 0},
    }))
    return str(path)


def _cli_refused(tmp_path, recipe: str) -> str:
    out = tmp_path / "run"
    result = cli.invoke(app, ["run", recipe, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists()
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def variable_length_lstm(tmp_path_factory):
    """An LSTM classifier on sequences of any length: its input is (batch, ?, 28)."""
    from edgepress.compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((None, 28)), k.layers.LSTM(8), k.layers.Dense(10)])
    path = tmp_path_factory.mktemp("variable") / "variable_lstm.keras"
    model.save(path)
    return model, path


def test_unknown_input_dimensions_are_named_with_the_recipe_fix(tmp_path, variable_length_lstm):
    message = _cli_refused(tmp_path, _bad_recipe(tmp_path, path=str(variable_length_lstm[1])))
    assert "(?, ?, 28)" in message and "dimension 1" in message
    assert "model: {input_shape: [N, 28]}" in message


def test_recipe_input_shape_fixes_unknown_dimensions(variable_length_lstm):
    from edgepress.models.source import fixed_input, wrap

    model, _ = variable_length_lstm
    fixed = fixed_input(wrap(model), [28, 28], "the model")
    assert tuple(fixed.input_shape) == (None, 28, 28)
    x = np.random.default_rng(0).random((4, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(fixed.predict(x), model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(EdgepressError, match="does not fit"):
        fixed_input(wrap(model), [28, 27], "the model")


def test_onnx_external_data_outside_its_folder_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((784, 10), np.float32), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weights"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], [weights],
    )
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(helper.make_model(graph), str(folder / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    (tmp_path / "secret.data").write_bytes((folder / "m.data").read_bytes())
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.data"  # climbs out of the model's folder
    onnx.save(model, str(folder / "m.onnx"))

    message = _cli_refused(tmp_path, _bad_recipe(tmp_path, path=str(folder / "m.onnx")))
    assert "m.onnx is refused" in message and "'../secret.data', outside the model's folder" in message


def test_saved_model_without_a_serving_signature_is_refused(tmp_path):
    from edgepress.compat import tensorflow

    tf = tensorflow()

    class Unsigned(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones((784, 10)))

        @tf.function
        def __call__(self, x):
            return tf.matmul(x, self.w)

    module = Unsigned()
    module.__call__.get_concrete_function(tf.TensorSpec([None, 784], tf.float32))
    tf.saved_model.save(module, str(tmp_path / "unsigned"))  # no input_signature: no serving signature

    message = _cli_refused(tmp_path, _bad_recipe(tmp_path, path=str(tmp_path / "unsigned")))
    assert "has no serving signature 'serving_default'" in message and "signatures=" in message


# -- Full recipes on real data (slow) -----------------------------------------------------------------


def _run_full(tmp_path, name: str) -> dict:
    result = cli.invoke(app, ["run", str(REPO / "recipes" / f"{name}.yaml"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.slow
def test_full_mnist_mlp(tmp_path):
    results = _run_full(tmp_path, "mnist_mlp")
    assert results["source"]["metrics"]["accuracy"] > 0.93 and len(results["artifacts"]) == 9 and results["passed"]


@pytest.mark.slow
def test_full_mnist_mlp_qat(tmp_path):
    results = _run_full(tmp_path, "mnist_mlp_qat")
    assert results["models"][-1]["accuracy"] > 0.93 and results["passed"]


@pytest.mark.slow
def test_full_mnist_lstm(tmp_path):
    results = _run_full(tmp_path, "mnist_lstm")
    assert results["source"]["metrics"]["accuracy"] > 0.93 and results["passed"]


@pytest.mark.slow
def test_full_python_char_gru(tmp_path):
    results = _run_full(tmp_path, "python_char_gru")
    assert results["source"]["metrics"]["perplexity"] < 5.5 and results["passed"]


@pytest.mark.slow
def test_full_mnist_raw_module(tmp_path):
    results = _run_full(tmp_path, "mnist_raw_module")
    assert results["source"]["metrics"]["accuracy"] > 0.93 and results["passed"]


@pytest.mark.slow
def test_full_mnist_torch_cnn(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    results = _run_full(tmp_path, "mnist_torch_cnn")
    assert results["source"]["metrics"]["accuracy"] > 0.95 and results["passed"]
    source = results["source"]["metrics"]["accuracy"]
    tflite = {a["precision"]: a for a in results["artifacts"] if a["format"] == "tflite"}
    assert set(tflite) == {"fp32", "int8"}
    assert all(abs(a["metrics"]["accuracy"] - source) <= 0.01 for a in tflite.values())
