"""`edgepress run` on a decoder LM: recipes/python_char_gpt.yaml at CI size (the zoo's char_gpt_tiny, a few hundred
windows), and the plan's refusals of an lm: section the model or the data cannot have."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.cli import app  # noqa: E402
from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402
from edgepress.plan import make_plan  # noqa: E402
from edgepress.recipe import Recipe  # noqa: E402
from tests.conftest import REPO  # noqa: E402

cli = CliRunner()


def ci_sized(tmp_path) -> dict:
    """recipes/python_char_gpt.yaml with a test-sized model, data, cache and timing (its exports and gates kept)."""
    recipe = yaml.safe_load((REPO / "recipes" / "python_char_gpt.yaml").read_text())
    recipe["model"].update(zoo="char_gpt_tiny", train_epochs=1)
    recipe["steps"] = [{**recipe["steps"][0], "width": 16, "layers": 1, "heads": 2, "epochs": 1}]
    recipe["data"].update(train_size=300, test_size=8, check_samples=2)
    recipe["lm"] = {"cache_len": 72, "prompt_len": 8, "eval_windows": 4}
    recipe["exports"] = [e for e in recipe["exports"] if e["precision"] in ("fp32", "dynamic", "int4_weight")]
    recipe["measure"] = {"runs": 10, "warmup": 1, "threads": 1, "max_seconds": 2}
    # An hour of training reaches perplexity ~5; one epoch of 300 windows does not.
    recipe["gates"].update(max_perplexity=100)
    return recipe


def test_the_char_gpt_recipe_runs_end_to_end(tmp_path):
    path = tmp_path / "gpt.yaml"
    path.write_text(yaml.safe_dump(ci_sized(tmp_path)))
    result = cli.invoke(app, ["run", str(path), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["source"]["kind"] == "decoder" and results["recipe"]["lm"]["prompt_len"] == 8
    teacher, student = results["models"]
    assert student["stage"] == "lm_distill" and student["params"] < teacher["params"] == student["teacher_params"]
    rows = {(a["format"], a["precision"]): a for a in results["artifacts"]}
    assert set(rows) == {("tflite", "fp32"), ("tflite", "dynamic"), ("tflite", "int4_weight"), ("onnx", "fp32"),
                         ("onnx", "int4_weight")}
    source = results["source"]["metrics"]["perplexity"]
    for row in rows.values():
        assert row["metrics"]["perplexity"] < 100 and row["lm"]["decode_tokens_per_s"]["p50"] > 0
        assert set(row["gates"]) == {"max_perplexity", "min_decode_tokens_per_s", "max_ttft_ms", "max_memory_mb"}
        assert row["check"]["greedy_tokens"] == 16
    # The float files compute the model itself (the source's perplexity is over every test window, these over 4).
    assert rows["tflite", "fp32"]["metrics"]["perplexity"] == pytest.approx(
        rows["onnx", "fp32"]["metrics"]["perplexity"], rel=1e-5)
    assert rows["tflite", "fp32"]["check"]["max_abs_diff"] < 1e-4 and source > 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "decode tokens/s" in report and "TTFT ms" in report and "min_decode_tokens_per_s >=" in report
    assert "x86-host: perplexity against decode tokens/s" in (tmp_path / "run" / "report.html").read_text()
    assert (tmp_path / "run" / "models" / "0-source" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "models" / "1-lm_distill" / "config.json").read_text())["width"] == 16


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt") / "gpt"
    DecoderSource(build_char_gpt(width=16, layers=1, heads=2, max_len=96), window=64).write(path)
    return path


def _plan(tmp_path, model: dict, lm: dict | None):
    recipe = {"name": "g", "model": model, "data": {"dataset": "python_source", "train_size": 10, "test_size": 4},
              "exports": [{"format": "onnx", "precision": "fp32"}]}
    if lm is not None:
        recipe["lm"] = lm
    return make_plan(Recipe.model_validate(recipe), tmp_path / "run")


def test_the_plan_resolves_the_lm_section(decoder_dir, tmp_path):
    plan = _plan(tmp_path, {"path": str(decoder_dir)}, None)
    assert plan.recipe.lm.cache_len == 96 and plan.recipe.lm.prompt_len == 16  # the default cache, cut to the limit
    assert plan.exports[0].request(plan.source).cache_len == 96


@pytest.mark.parametrize("lm, message", [
    ({"cache_len": 128}, "above the position limit of .* \\(96 tokens\\)"),
    ({"cache_len": 32, "prompt_len": 8}, "shorter than the data's windows \\(64 tokens\\)"),
    ({"cache_len": 80, "prompt_len": 64}, "lm.prompt_len 64 is not shorter than the data's windows"),
])
def test_the_plan_refuses_what_the_model_cannot_hold(decoder_dir, tmp_path, lm, message):
    with pytest.raises(EdgepressError, match=message):
        _plan(tmp_path, {"path": str(decoder_dir)}, lm)
    assert not (tmp_path / "run").exists()


def test_an_lm_section_for_a_model_that_is_not_a_decoder(tmp_path):
    import torch

    from edgepress.models.torch_program import save_torch_program

    path = save_torch_program(torch.nn.Sequential(torch.nn.Linear(64, 97)), torch.zeros(2, 64), tmp_path / "m.pt2")
    with pytest.raises(EdgepressError, match="not a decoder"):
        _plan(tmp_path, {"path": str(path)}, {"cache_len": 64})


def test_a_student_no_smaller_than_its_teacher_is_refused(decoder_dir, tmp_path):
    recipe = {"name": "g", "model": {"path": str(decoder_dir)}, "steps": [{"type": "lm_distill", "width": 32}],
              "data": {"dataset": "python_source", "train_size": 10, "test_size": 4}}
    with pytest.raises(EdgepressError, match="no smaller than its teacher \\(width 16, 1 layers\\)"):
        make_plan(Recipe.model_validate(recipe), tmp_path / "run")


def test_a_vocabulary_that_cannot_encode_the_data(tmp_path):
    small = build_char_gpt(vocab=64, width=16, layers=1, heads=2, max_len=96)
    DecoderSource(small, window=64).write(tmp_path / "small")
    with pytest.raises(EdgepressError, match="token ids up to 9[0-9], and .* has a vocabulary of 64"):
        _plan(tmp_path, {"path": str(tmp_path / "small")}, None)


def test_a_target_over_adb_is_refused(decoder_dir, tmp_path):
    recipe = {"name": "g", "model": {"path": str(decoder_dir)}, "targets": ["android-arm64"],
              "data": {"dataset": "python_source", "train_size": 10, "test_size": 4}}
    with pytest.raises(EdgepressError, match="reached over adb"):
        make_plan(Recipe.model_validate(recipe), tmp_path / "run")


def test_a_prompt_longer_than_the_cache_is_refused_by_the_schema():
    with pytest.raises(Exception, match="longer than the KV cache"):
        Recipe.model_validate({"model": {"zoo": "char_gpt"}, "lm": {"cache_len": 16, "prompt_len": 32}})
