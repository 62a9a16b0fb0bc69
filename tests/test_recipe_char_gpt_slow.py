"""recipes/python_char_gpt.yaml run in full (slow: the recipe's own size, tens of minutes): char_gpt trained on 20,000
windows, distilled into its width-64 student, exported as TFLite (prefill + decode) and ONNX (past/present), each
file measured as an LM is used. tests/test_lm_run.py runs the same recipe at CI size.

Run once (2026-12-07, 70 minutes on 2 cores shared at load 2-11, most of it the teacher's training at low priority):
teacher 385,920 parameters at perplexity 4.81 over the 2,000 test windows, student 111,040 at 4.76; through each file
over the first 200 of them 7.79 (fp32), 7.82 (dynamic), 7.81 (int8_weight), 9.47 (TFLite int4), 8.67 (ONNX int4),
10,000-18,100 decode tokens/s, exit 1: every file is over the recipe's max_perplexity 5.5, which those 200 windows
do not reach even in float."""

import json

import pytest
from typer.testing import CliRunner

from edgepress.cli import EXIT_GATES, app
from tests.conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("litert_torch")


@pytest.mark.slow
def test_full_python_char_gpt(tmp_path):
    result = CliRunner().invoke(app, ["run", str(REPO / "recipes" / "python_char_gpt.yaml"), "-o", str(tmp_path)])
    # Every file is judged by the recipe's gates; whether they pass is the recipe's claim, checked below.
    assert result.exit_code in (0, EXIT_GATES), result.output
    results = json.loads((tmp_path / "results.json").read_text())
    teacher, student = results["models"][0], results["models"][-1]
    assert student["params"] < teacher["params"]  # lm_distill made the smaller model the files come from
    artifacts = {(a["format"], a["precision"]): a for a in results["artifacts"]}
    assert set(artifacts) == {("tflite", "fp32"), ("tflite", "dynamic"), ("tflite", "int8_weight"),
                              ("tflite", "int4_weight"), ("onnx", "fp32"), ("onnx", "int4_weight")}
    # Perplexity teacher-forced through each file's own prefill and decode, on the same held-out windows: the float
    # files compute the student itself, the quantized ones stay near it.
    fp32 = artifacts["tflite", "fp32"]["metrics"]["perplexity"]
    assert artifacts["onnx", "fp32"]["metrics"]["perplexity"] == pytest.approx(fp32, rel=1e-4)
    for key, artifact in artifacts.items():
        lm = artifact["lm"]
        assert lm["decode_tokens_per_s"]["p50"] > 0 and lm["ttft_ms"]["p50"] > 0, key
        assert artifact["memory"]["peak_rss_bytes"] > 0, key
        # int4 per channel costs char_gpt_small 17% of its perplexity on held-out windows (benchmarks/RESULTS.md).
        assert artifact["metrics"]["perplexity"] < (1.3 if key[1] == "int4_weight" else 1.05) * fp32, key
        assert set(artifact["gates"]) == {"max_perplexity", "min_decode_tokens_per_s", "max_ttft_ms",
                                          "max_memory_mb"}, key
        assert lm["decode_tokens_per_s"]["p50"] >= 1000, key  # the speed the issue asks of a device decoder
    assert results["passed"] == (result.exit_code == 0)
