"""Decoder LMs with a KV cache: real litert-torch, torch.onnx, LiteRT's and onnxruntime's quantizers, measured by the
on-device runner (locally and over SSH) on Python-source windows.

The model is the zoo's char_gpt at test size, trained a few hundred windows; every file is checked against it by
teacher-forcing held-out windows through the file's own prefill and decode.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.deploy import runner  # noqa: E402
from edgepress.deploy.measure import measure_many  # noqa: E402
from edgepress.deploy.registry import ExportRequest, export  # noqa: E402
from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt, train_char_gpt  # noqa: E402
from edgepress.models.datasets import load_dataset  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402

CACHE, PROMPT = 72, 8


@pytest.fixture(scope="module")
def text():
    return load_dataset("python_source", train_size=400, test_size=8)


@pytest.fixture(scope="module")
def gpt(text):
    model = build_char_gpt(width=32, layers=1, heads=2, max_len=96)
    train_char_gpt(model, text.x_train, text.y_train, epochs=1, batch_size=32, learning_rate=1e-2)
    return DecoderSource(model, window=64)


@pytest.fixture(scope="module")
def files(gpt, text, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    made = {}
    for fmt, precision in (("tflite", "fp32"), ("onnx", "fp32"), ("tflite", "dynamic"), ("tflite", "int4_weight"),
                           ("onnx", "int4_weight")):
        request = ExportRequest(gpt, out / f"gpt_{precision}.{fmt}", fmt, precision, check_data=text.x_test[:2],
                                cache_len=CACHE, prompt_len=PROMPT)
        made[fmt, precision] = export(request)
    return made


def test_float_files_compute_the_model_token_by_token(files):
    for fmt in ("tflite", "onnx"):
        check = files[fmt, "fp32"].check
        assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4, check
        assert abs(check["log_likelihood_diff"]) < 1e-5
        assert check["greedy_agree_tokens"] == check["greedy_tokens"] == 16
    tflite = files["tflite", "fp32"]
    # One cache per layer under LiteRT-LM's names (edgepress.deploy.litertlm bundles the file as it is).
    assert {i.name for i in tflite.inputs} == {"decode:tokens", "decode:input_pos", "decode:kv_cache_k_0",
                                               "decode:kv_cache_v_0"}
    assert tflite.quantization["signatures"] == [f"prefill_{PROMPT}", "decode"]
    kv = next(i for i in tflite.inputs if i.name == "decode:kv_cache_k_0")
    assert kv.shape == [1, 2, CACHE, 16]  # (batch, heads, cache, head_dim)
    onnx_inputs = {i.name for i in files["onnx", "fp32"].inputs}
    assert onnx_inputs == {"input_ids", "past_key_values.0.key", "past_key_values.0.value"}


def test_quantized_files_are_smaller_and_close(files):
    for fmt, precision in (("tflite", "dynamic"), ("tflite", "int4_weight"), ("onnx", "int4_weight")):
        artifact, float_file = files[fmt, precision], files[fmt, "fp32"]
        assert artifact.bytes < 0.8 * float_file.bytes, (fmt, precision)
        # Close to the model (a per-token log-likelihood within 0.2 nats), yet not the float file itself.
        assert 0 < artifact.check["log_likelihood_abs_diff"] < 0.2, (fmt, precision, artifact.check)
        assert artifact.check["top1_agreement"] > 0.8
    assert files["onnx", "int4_weight"].quantization["matmul_nbits"]


def test_the_runner_measures_each_file_as_an_lm(files, gpt, text):
    x, y = text.x_test[:3], text.y_test[:3]
    paths = [files["tflite", "fp32"], files["onnx", "fp32"], files["onnx", "int4_weight"]]
    results = measure_many(paths, (x, y), "x86-host", runs=10, warmup=1, threads=1, lm_prompt=PROMPT)
    source = runner.score(gpt.predict(x), y)["perplexity"]
    for result in results:
        lm = result["lm"]
        assert lm["prompt_len"] == PROMPT and lm["cache_len"] in (CACHE, 2**31)
        assert lm["ttft_ms"]["p50"] > 0 and lm["decode_tokens_per_s"]["p50"] > 0
        low, high = lm["decode_tokens_per_s"]["p50_ci"]
        assert low <= lm["decode_tokens_per_s"]["p50"] <= high
        assert lm["generated_tokens"] == CACHE - PROMPT and len(lm["greedy"]) == 64
        assert result["memory"]["peak_rss_bytes"] > 0 and result["samples"] == 3
    # Teacher-forced through the float files' own prefill and decode: the model's perplexity.
    assert abs(results[0]["perplexity"] - source) < 1e-3 and abs(results[1]["perplexity"] - source) < 1e-3
    assert results[0]["lm"]["greedy"] == results[1]["lm"]["greedy"]
    assert abs(results[2]["perplexity"] - source) / source < 0.2


def test_a_decode_past_the_cache_stops_with_a_message(files):
    model = runner.open_decoder(str(files["tflite", "fp32"].path))
    model.prefill(np.ones(PROMPT))
    for _ in range(CACHE - PROMPT):
        model.decode(1)
    with pytest.raises(runner.RunnerError, match=f"KV cache holds {CACHE} tokens"):
        model.decode(1)
    with pytest.raises(runner.RunnerError, match=f"prompts of {PROMPT} tokens"):
        model.prefill(np.ones(PROMPT + 1))


def test_the_runner_refuses_a_file_that_is_not_a_decoder(tmp_path, capsys):
    import torch

    path = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), input_names=["x"], dynamo=False)
    assert runner.main([str(path), "--lm-prompt", "4", "--json"]) == 2
    assert "not a decoder LM file" in capsys.readouterr().err


def test_exports_refuse_a_cache_the_model_cannot_hold(gpt, tmp_path):
    with pytest.raises(EdgepressError, match="position limit of .* \\(96 tokens\\)"):
        export(ExportRequest(gpt, tmp_path / "g.tflite", "tflite", "fp32", cache_len=128, prompt_len=8))
    with pytest.raises(EdgepressError, match="longer than the KV cache"):
        export(ExportRequest(gpt, tmp_path / "g.onnx", "onnx", "fp32", cache_len=16, prompt_len=32))
    with pytest.raises(EdgepressError, match="edgepress makes fp32, int4_weight"):
        export(ExportRequest(gpt, tmp_path / "g.onnx", "onnx", "int8_dynamic", cache_len=16, prompt_len=8))
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_over_ssh_the_same_numbers_come_back(files, text, ssh_device, loopback_ssh):
    x, y = text.x_test[:2], text.y_test[:2]
    paths = [files["tflite", "dynamic"], files["onnx", "int4_weight"]]
    remote = measure_many(paths, (x, y), ssh_device, runs=5, warmup=1, threads=1, lm_prompt=PROMPT)
    local = measure_many(paths, (x, y), "x86-host", runs=5, warmup=1, threads=1, lm_prompt=PROMPT)
    for there, here in zip(remote, local, strict=True):
        assert there["device"] == "loopback-ssh"
        assert there["perplexity"] == pytest.approx(here["perplexity"], rel=1e-6)
        assert there["lm"]["greedy"] == here["lm"]["greedy"] and there["lm"]["decode_tokens_per_s"]["p50"] > 0
    # The device's runner (ssh_device runs it watched, tests/deploy/runner_watch.py) loaded no TensorFlow or torch.
    assert loopback_ssh.runs() and all(run["loaded"] == [] for run in loopback_ssh.runs())
