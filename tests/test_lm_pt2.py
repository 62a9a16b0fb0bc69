"""A user's own decoder as a `.pt2` program: what edgepress accepts. A program written by torch.export of a decoder
whose forward is tokens (1, T) -> logits (1, T, vocabulary) is measured as a sequence model (perplexity over whole
windows through each file, TFLite and ONNX exports without a KV cache); an lm: section (KV-cache exports and
measures) is refused in the plan, naming the forms that have them (a decoder directory)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.cli import app  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt  # noqa: E402
from edgepress.models.torch_program import save_torch_program  # noqa: E402

cli = CliRunner()


def _recipe(tmp_path, lm: dict | None = None) -> str:
    model = build_char_gpt(width=16, layers=1, heads=2, max_len=96, seed=1).eval()
    path = save_torch_program(model, torch.zeros((1, 64), dtype=torch.int64), tmp_path / "gpt.pt2")
    recipe = {"name": "g", "model": {"path": str(path)},
              "data": {"dataset": "python_source", "train_size": 20, "test_size": 6},
              "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "onnx", "precision": "fp32"}],
              "measure": {"runs": 5, "warmup": 1, "max_seconds": 1}}
    if lm is not None:
        recipe["lm"] = lm
    (tmp_path / "gpt.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "gpt.yaml")


def test_a_pt2_decoder_is_measured_as_a_sequence_model(tmp_path):
    result = cli.invoke(app, ["run", _recipe(tmp_path), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["source"]["kind"] == "torch"
    source = results["source"]["metrics"]["perplexity"]
    assert 50 < source < 200  # an untrained model over 97 characters
    for row in results["artifacts"]:
        assert row["metrics"]["perplexity"] == pytest.approx(source, rel=1e-3)  # the same windows, the same model
        assert row.get("lm") is None  # no cache: nothing is timed token by token


def test_an_lm_section_for_a_pt2_decoder_is_refused_naming_what_is_accepted(tmp_path):
    result = cli.invoke(app, ["run", _recipe(tmp_path, {"cache_len": 72, "prompt_len": 8}), "-o",
                              str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "is a PyTorch program, not a decoder with a cache edgepress can drive" in message
    assert "tokens (1, T) -> logits (1, T, vocabulary)" in message and "model directory" in message
    assert "save_pretrained" in message and not (tmp_path / "run").exists()
