"""m:n (2:4) pruning, sparse TFLite export for XNNPACK, and a recipe that composes distill -> prune m:n -> sparse."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import edgepress
from edgepress.cli import app
from edgepress.compat import keras
from edgepress.compress import PruneConfig, prune
from edgepress.deploy import export_tflite
from edgepress.deploy.runner import open_model
from edgepress.errors import EdgepressError
from edgepress.models import training


@pytest.fixture(scope="module")
def pruned_2_4(trained_cnn, digits):
    return prune(trained_cnn, digits.x_train, digits.y_train, sparsity_m_by_n=(2, 4), fine_tune_epochs=1)


def _groups_along_inputs(kernel: np.ndarray, n: int) -> np.ndarray:
    """The kernel as rows of n consecutive input-channel weights (TFLite's layout: input channels last),
    the last group of each row padded with zeros, as tfmot pads it."""
    rows = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 0, 1, 2).reshape(-1, kernel.shape[2])
    rows = np.pad(rows, [(0, 0), (0, -rows.shape[1] % n)])
    return rows.reshape(rows.shape[0], -1, n)


def test_prune_m_by_n_leaves_2_zeros_in_every_4_input_weights(trained_cnn, pruned_2_4, digits):
    for layer in (layer for layer in pruned_2_4.layers if hasattr(layer, "kernel")):
        kernel = layer.kernel.numpy()
        zeros_per_group = (_groups_along_inputs(kernel, 4) == 0).sum(axis=-1)
        assert zeros_per_group.min() >= 2, f"{layer.name}: a group of 4 has {zeros_per_group.min()} zeros"
        if kernel.shape[-2] >= 4:  # the first conv has one input channel: its groups are padding but one weight
            assert 0.5 <= float(np.mean(kernel == 0)) < 0.55, layer.name
    before = training.accuracy(training.predict(trained_cnn, digits.x_test), digits.y_test)
    assert training.accuracy(training.predict(pruned_2_4, digits.x_test), digits.y_test) >= before - 0.05


def test_m_by_n_refuses_a_kernel_it_cannot_pattern(digits):
    k = keras()
    model = k.Sequential([k.layers.Input((16, 2)), k.layers.Conv1D(4, 3, name="c1"), k.layers.Flatten(),
                          k.layers.Dense(10, name="out")])
    with pytest.raises(EdgepressError, match=r"'c1' \(Conv1D\).*layers: \[out\]"):
        prune(model, np.zeros((4, 16, 2)), np.zeros(4), sparsity_m_by_n=(2, 4))


@pytest.mark.parametrize("options, message", [
    ({"sparsity_m_by_n": (4, 4)}, "0 < m < n"),
    ({"sparsity_m_by_n": (2, 4), "target_sparsity": 0.8}, "leave out target_sparsity"),
])
def test_m_by_n_config_refuses_contradictions(options, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**options)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_sparse_tflite_is_smaller_loads_and_agrees_with_keras(pruned_2_4, digits, tmp_path, precision):
    check = digits.x_test[:100]
    dense = export_tflite(pruned_2_4, tmp_path / "dense.tflite", precision, check_data=check)
    sparse = export_tflite(pruned_2_4, tmp_path / "sparse.tflite", precision, check_data=check, sparse=True)

    assert sparse.quantization["sparse"] and sparse.quantization["sparse_tensors"] >= 3  # conv2d_1, conv2d_2, dense
    assert "sparse" not in dense.quantization
    assert sparse.bytes < 0.9 * dense.bytes  # half the values, plus their indices: 0.69x fp32, 0.87x fp16
    assert sparse.check["top1_agreement"] >= 0.99 and sparse.check["max_abs_diff"] < 0.05
    got = open_model(str(sparse.path)).predict(check)
    assert np.allclose(got, open_model(str(dense.path)).predict(check), atol=1e-3)


def test_sparse_int8_is_refused(pruned_2_4, digits, tmp_path):
    with pytest.raises(EdgepressError, match="fp32 or fp16, not 'int8'"):
        export_tflite(pruned_2_4, tmp_path / "s.tflite", "int8", calibration=digits.x_train[:20], sparse=True)
    assert not list(tmp_path.iterdir())


def test_recipe_composes_distill_prune_m_by_n_and_reports_sparse_export(trained_cnn, tmp_path):
    trained_cnn.save(tmp_path / "teacher.keras")
    recipe = edgepress.Recipe.from_dict({
        "name": "composed",
        "model": {"path": "teacher.keras"},
        "data": {"dataset": "digits", "train_size": 600, "test_size": 300, "check_samples": 50},
        "steps": [
            {"type": "distill", "student": {"width": 0.5}, "epochs": 1, "batch_size": 32, "compare_scratch": True},
            {"type": "prune", "sparsity_m_by_n": [2, 4], "fine_tune_epochs": 1},
        ],
        "exports": [{"format": "tflite", "precision": "fp32"},
                    {"format": "tflite", "precision": "fp32", "sparse": True}],
        "measure": {"runs": 20, "warmup": 5, "threads": 1},
    }, base=tmp_path)

    report = edgepress.run(recipe, tmp_path / "run")

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    source, distilled, pruned = results["models"]
    assert [m["stage"] for m in results["models"]] == ["source", "distill", "prune"]
    assert distilled["params"] < source["params"] / 3  # half the channels: about a quarter of the weights
    assert distilled["distill"]["teacher_accuracy"] == source["accuracy"]
    assert distilled["distill"]["student_accuracy"] == distilled["accuracy"]
    assert 0 < distilled["distill"]["scratch_accuracy"] <= 1
    assert pruned["sparsity"] >= 0.45
    rows = {a["name"]: a for a in results["artifacts"]}
    assert set(rows) == {"composed_fp32.tflite", "composed_fp32_sparse.tflite"}
    assert rows["composed_fp32_sparse.tflite"]["quantization"]["sparse_tensors"] >= 3
    assert rows["composed_fp32_sparse.tflite"]["bytes"] < rows["composed_fp32.tflite"]["bytes"]
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "| fp32 sparse |" in markdown and "same student without the teacher" in markdown
    [note] = report.sparse_notes()
    assert "composed_fp32_sparse.tflite on x86-host" in note and "the gzip bytes of composed_fp32.tflite" in note
    assert f"Sparse tensors: {note}" in markdown
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["steps"][0]["student"]["width"] == 0.5


def _refused(tmp_path, model, steps) -> str:
    """Run a recipe on `model` through the CLI: it must exit 2 with one clear message and write nothing."""
    model.save(tmp_path / "m.keras")
    recipe = {"name": "bad", "model": {"path": "m.keras"}, "data": {"dataset": "digits", "test_size": 50},
              "steps": steps, "exports": [{"format": "tflite", "precision": "int8"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    return " ".join(result.output.split())


@pytest.mark.parametrize("step, message", [
    ({"type": "distill", "student": {"width": 0.01}}, "width 0.01 leaves layer 'conv' with no filters"),
    ({"type": "cluster"}, "cannot cluster layer 'prelu' (PReLU)"),
])
def test_cli_refuses_bad_steps_before_writing(prelu_cnn, tmp_path, step, message):
    assert message in _refused(tmp_path, prelu_cnn, [step])


def test_steps_after_distill_are_checked_against_the_student(prelu_cnn, tmp_path):
    # The student (a zoo MLP) has no layer 'prelu': the qat step after distill is checked against it.
    output = _refused(tmp_path, prelu_cnn, [{"type": "distill", "student": {"zoo": "seed_mlp"}},
                                           {"type": "qat", "layers": ["prelu"]}])
    assert "no layer named prelu" in output and "dense, dense_1, dense_2" in output


@pytest.mark.parametrize("sparse_p50, sparse_p90, verdict", [
    (0.08, 0.09, "faster"), (0.13, 0.14, "slower"), (0.09, 0.11, "neither faster nor slower"),
])
def test_report_says_whether_sparse_storage_helped_beyond_the_spread(sparse_p50, sparse_p90, verdict):
    def row(name, sparse, p50, p90, size):
        return {"name": name, "device": "x86-host", "format": "tflite", "precision": "fp32", "bytes": size,
                "gzip_bytes": size // 2, "quantization": {"sparse": True, "sparse_tensors": 4} if sparse else {},
                "latency": {"p50": p50, "p90": p90}}

    report = edgepress.Report({"artifacts": [row("m_fp32.tflite", False, 0.10, 0.12, 1000),
                                             row("m_fp32_sparse.tflite", True, sparse_p50, sparse_p90, 700)]})

    [note] = report.sparse_notes()
    assert note.startswith("m_fp32_sparse.tflite on x86-host (4 weight tensors stored sparse): 0.70x the bytes")
    assert f"sparse storage is {verdict}" in note
