"""`edgepress run` with structured_prune on a decoder LM (CI size: the zoo's char_gpt_tiny): heads and MLP units
removed by measured importance, distilled from the unpruned model, written back as a decoder directory, exported with
a KV cache and measured (perplexity, params per step in the report)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.cli import app  # noqa: E402
from tests.test_lm_run import ci_sized  # noqa: E402

cli = CliRunner()


def test_structured_prune_of_char_gpt_runs_end_to_end(tmp_path):
    recipe = ci_sized(tmp_path)
    recipe["steps"] = [{"type": "structured_prune", "ratio": 0.5, "criterion": "taylor", "round_to": 8,
                        "fine_tune_epochs": 1, "batch_size": 64, "learning_rate": 0.003, "distill": True}]
    recipe["exports"] = [e for e in recipe["exports"] if e["precision"] in ("fp32", "int4_weight")]
    path = tmp_path / "gpt.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli.invoke(app, ["run", str(path), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    source, pruned = results["models"]
    assert pruned["stage"] == "structured_prune" and pruned["params"] < source["params"]
    assert (pruned["heads"], pruned["mlp_units"]) == (1, 32)  # char_gpt_tiny: 2 heads of 16, 64 units
    assert pruned["perplexity"] > 1 and pruned["macs"] < source["macs"]
    settings = json.loads((tmp_path / "run" / "models" / "1-structured_prune" / "config.json").read_text())
    assert (settings["heads"], settings["head_size"], settings["mlp"], settings["width"]) == (1, 16, 32, 32)
    rows = {(a["format"], a["precision"]): a for a in results["artifacts"]}
    assert set(rows) == {("tflite", "fp32"), ("tflite", "int4_weight"), ("onnx", "fp32"), ("onnx", "int4_weight")}
    for row in rows.values():
        assert 1 < row["metrics"]["perplexity"] < 100 and row["lm"]["decode_tokens_per_s"]["p50"] > 0
    assert rows["tflite", "fp32"]["check"]["max_abs_diff"] < 1e-4
    report = (tmp_path / "run" / "report.md").read_text()
    assert "structured_prune" in report and f"{pruned['params']:,} params" in report
    assert f"{source['params']:,} params" in report
