"""Attention encoders from each framework through the steps and every export: each file loads in its runtime, is
checked against its model and measured. Keras 3 (natively) and tf_keras (its exact GELU is an Erfc that ONNX lacks,
rewritten as 1 - Erf) lose an attention head and half their MLP units (structured_prune, ranked by measured
importance) and are distilled from the original; so does the PyTorch program, exported at batch 1 (its batch is fixed:
every export keeps it, as the plan says), pruned on its own graph and distilled in PyTorch."""

from __future__ import annotations

import pytest
import yaml

import edgepress
from tests.models import encoders

DIGITS = {"dataset": "digits", "train_size": 300, "test_size": 60, "calibration_samples": 20, "check_samples": 20}
MEASURE = {"runs": 3, "warmup": 1, "target_ci_width": None}
TFLITE = ("fp32", "fp16", "dynamic", "int8", "int16x8", "int8_weight", "int4_weight")
ONNX = ("fp32", "fp16", "int8_dynamic", "int8_static", "int4_weight")
EVERY_EXPORT = [{"format": "tflite", "precision": p} for p in TFLITE] + [{"format": "onnx", "precision": p}
                                                                          for p in ONNX]
DISTILL = {"type": "distill", "teacher": "source", "epochs": 3, "batch_size": 32, "learning_rate": 0.003}
STEPS = [{"type": "structured_prune", "ratio": 0.5, "criterion": "taylor", "fine_tune_epochs": 1}, DISTILL]
MAKERS = {"keras3": (encoders.keras3_encoder, "enc.keras"), "tf_keras": (encoders.tf_keras_encoder, "enc.keras"),
          "torch": (encoders.torch_encoder, "enc.pt2")}


def encoder_file(kind: str, tmp_path):
    make, name = MAKERS[kind]
    path = tmp_path / name
    make(path)
    return path


@pytest.mark.parametrize("kind", ["keras3", "tf_keras", "torch"])
def test_every_export_of_an_attention_encoder_loads_checks_and_measures(kind, tmp_path):
    path = encoder_file(kind, tmp_path)
    recipe = edgepress.Recipe.from_dict({"name": "enc", "model": {"path": str(path)}, "data": DIGITS,
                                         "steps": STEPS,
                                         "exports": EVERY_EXPORT, "measure": MEASURE})
    report = edgepress.run(recipe, tmp_path / "run")
    assert report.results["source"]["kind"] == kind
    source, pruned, distilled = report.results["models"]
    assert pruned["params"] < source["params"] and pruned["macs"] < source["macs"]
    assert distilled["params"] == pruned["params"]  # distill trains the pruned model on from the original
    assert distilled["accuracy"] > 0.3
    fixed = [n for n in report.results["notes"] if "batch fixed at 1" in n]
    assert bool(fixed) == (kind == "torch")  # the plan says how a fixed-batch program is handled
    rows = {(a["format"], a["precision"]): a for a in report.artifacts}
    assert set(rows) == {(e["format"], e["precision"]) for e in EVERY_EXPORT}
    assert report.results["source"]["metrics"]["accuracy"] > 0.5  # it learned something: agreement means something
    model_accuracy = report.results["models"][-1]["accuracy"]
    for key, row in rows.items():
        assert row["latency"]["p50"] > 0, key
        assert row["check"]["samples"] == DIGITS["check_samples"], key
        assert row["metrics"]["accuracy"] >= model_accuracy - 0.25, key
        # Every file computes what its source computes, within what its precision loses.
        assert row["check"]["top1_agreement"] >= (0.99 if key[1] in ("fp32", "fp16") else 0.7), key
    for key in (("tflite", "fp32"), ("onnx", "fp32")):
        assert rows[key]["check"]["max_abs_diff"] < 1e-3, key
    assert rows[("tflite", "int8")]["quantization"]["int8_macs"] > 0.5


def test_a_fixed_batch_program_is_said_in_the_plan_and_another_batch_is_refused_there(tmp_path):
    from typer.testing import CliRunner

    from edgepress.cli import app
    from edgepress.plan import make_plan

    path = tmp_path / "enc.pt2"
    encoders.torch_encoder(path, epochs=1)
    recipe = {"name": "enc", "model": {"path": str(path)}, "data": DIGITS, "measure": MEASURE}
    plan = make_plan(edgepress.Recipe.from_dict({**recipe, "exports": EVERY_EXPORT}), tmp_path / "plan")
    (note,) = [n for n in plan.notes if "batch fixed at 1" in n]
    assert "every export keeps batch 1" in note and "torch.export.Dim" in note
    for format in ("tflite", "onnx"):
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(
            {**recipe, "exports": [{"format": format, "precision": "fp32", "batch_size": 4}]}))
        result = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / format)])
        message = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "batch_size" in message and "fixed" in message and not (tmp_path / format).exists()


def test_distill_trains_a_pytorch_program_on_and_its_exports_keep_the_batch(tmp_path):
    """distill (teacher: source, no student) trains the program itself in PyTorch from the original, and writes it
    again as a .pt2 at the batch it takes; its exports are checked against the distilled program."""
    path = tmp_path / "enc.pt2"
    encoders.torch_encoder(path, epochs=2)
    recipe = edgepress.Recipe.from_dict({
        "name": "enc", "model": {"path": str(path)}, "data": DIGITS, "measure": MEASURE,
        "steps": [{"type": "distill", "teacher": "source", "epochs": 3, "batch_size": 32, "learning_rate": 0.003}],
        "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "onnx", "precision": "int8_static"}],
    })
    report = edgepress.run(recipe, tmp_path / "run")
    source, distilled = report.results["models"]
    assert distilled["params"] == source["params"] and distilled["accuracy"] > source["accuracy"]
    assert (tmp_path / "run" / "models" / "1-distill.pt2").exists()
    for row in report.artifacts:
        assert row["check"]["top1_agreement"] >= 0.8 and row["latency"]["p50"] > 0
    from edgepress.deploy.signature import signature

    for file in (tmp_path / "run" / "artifacts" / name for name in ("enc_fp32.tflite", "enc_int8_static.onnx")):
        (first, *_), _ = signature(file)
        assert first.shape[0] == 1  # the program's fixed batch, kept
