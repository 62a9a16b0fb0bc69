"""The PyTorch encoder (a `.pt2` exported at batch 1, written by tests/models/encoders.py) through the CLI:
structured_prune (a head and half the MLP units, ranked by taylor) + distill + TFLite int8 + ONNX int8_static, exit 0,
every artifact checked against the pruned program and measured; and a layer that cannot be pruned refused in the
plan, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from tests.models import encoders

DIGITS = {"dataset": "digits", "train_size": 64, "test_size": 40, "calibration_samples": 10, "check_samples": 10}
MEASURE = {"runs": 3, "warmup": 1, "target_ci_width": None}
ATTENTION = "encoder.layers.0.self_attn"


def _recipe(tmp_path, steps: list[dict]) -> str:
    path = tmp_path / "enc.pt2"
    if not path.exists():
        encoders.torch_encoder(path, epochs=8)
    recipe = {"name": "enc", "model": {"path": str(path)}, "data": DIGITS, "measure": MEASURE, "steps": steps,
              "exports": [{"format": "tflite", "precision": "int8"}, {"format": "onnx", "precision": "int8_static"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "r.yaml")


def test_a_pytorch_encoder_is_pruned_distilled_and_exported_to_int8(tmp_path):
    steps = [{"type": "structured_prune", "ratio": 0.5, "criterion": "taylor", "fine_tune_epochs": 1,
              "batch_size": 32},
             {"type": "distill", "teacher": "source", "epochs": 1, "batch_size": 32, "learning_rate": 0.003}]
    result = CliRunner().invoke(app, ["run", _recipe(tmp_path, steps), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    source, pruned, distilled = results["models"]
    assert pruned["params"] < source["params"] and pruned["macs"] < source["macs"]  # counted on the programs
    assert distilled["params"] == pruned["params"] and distilled["macs"] == pruned["macs"]
    assert (tmp_path / "run" / "models" / "1-structured_prune.pt2").exists()
    rows = {(a["format"], a["precision"]): a for a in results["artifacts"]}
    assert set(rows) == {("tflite", "int8"), ("onnx", "int8_static")}
    for key, row in rows.items():
        assert Path(row["path"]).exists() and row["bytes"] > 0, key
        assert row["latency"]["p50"] > 0 and row["check"]["samples"] == DIGITS["check_samples"], key
        assert row["check"]["top1_agreement"] >= 0.7, key
    assert rows[("tflite", "int8")]["quantization"]["int8_macs"] > 0.5
    from edgepress.deploy.signature import signature

    (first, *_), _ = signature(Path(rows[("onnx", "int8_static")]["path"]))
    assert first.shape[0] == 1  # the program's fixed batch, kept through the pruning


def test_a_layer_structured_prune_cannot_follow_is_refused_in_the_plan(tmp_path):
    steps = [{"type": "structured_prune", "ratio": 0, "layers": {"encoder.layers.0.linear2": 0.5}}]
    result = CliRunner().invoke(app, ["run", _recipe(tmp_path, steps), "-o", str(tmp_path / "run")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "encoder.layers.0.linear2" in message and "residual" in message and ATTENTION in message
    assert not (tmp_path / "run").exists()
