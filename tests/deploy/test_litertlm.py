"""A real LM runtime on edgepress's TFLite decoder: LiteRT-LM (litert-lm-api, the `lm` extra) loads the .litertlm
bundle edgepress writes around the file (litert-lm-builder), tokenizes a text prompt with the bundled tokenizer.json
and generates, greedily, the continuation edgepress's runner generates from the same file.

LiteRT-LM's CPU executor computes the logits a little differently from the LiteRT interpreter (measured here: two
steps in 56 where the two best logits are within 0.002 of each other pick the other one), so the test compares
greedy continuations over the steps where the runner's choice leads by more than TIE, and checks every token
LiteRT-LM generated is the runner's choice given the same history, or within TIE of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_torch")
litert_lm = pytest.importorskip("litert_lm")

from edgepress.deploy import runner  # noqa: E402
from edgepress.deploy.litertlm import litertlm_bundle  # noqa: E402
from edgepress.deploy.registry import ExportRequest, export  # noqa: E402
from edgepress.deploy.tokenizer import char_tokenizer  # noqa: E402
from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt  # noqa: E402
from edgepress.models.datasets import decode_ids, encode_text  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402

CACHE, PROMPT_LEN = 64, 8
TIE = 0.005  # logits this close are a tie LiteRT-LM's kernels may break the other way


@pytest.fixture(scope="module")
def gpt():
    # Random weights: a continuation that changes token to token, so an off-by-one position or a lost cache shows.
    return DecoderSource(build_char_gpt(width=32, layers=2, heads=2, max_len=96, seed=3), window=64)


def _export(gpt, folder, precision: str = "fp32"):
    out = folder / f"gpt_{precision}.tflite"
    return export(ExportRequest(gpt, out, "tflite", precision, cache_len=CACHE, prompt_len=PROMPT_LEN)).path


@pytest.fixture(scope="module")
def tflite(gpt, tmp_path_factory):
    return _export(gpt, tmp_path_factory.mktemp("litertlm"))


def _litert_lm_generates(bundle, text: str) -> str:
    engine = litert_lm.Engine(str(bundle), max_num_tokens=CACHE)
    assert engine.tokenize(text) == encode_text(text).tolist()  # the bundled tokenizer.json reads characters
    session = engine.create_session(apply_prompt_template=False, sampler_config=litert_lm.SamplerConfig(top_k=1))
    session.run_prefill([text])
    return session.run_decode().texts[0]


@pytest.mark.parametrize("precision", ["fp32", "int4_weight"])
def test_litert_lm_generates_what_the_runner_generates(gpt, tflite, tmp_path, precision):
    if precision != "fp32":
        tflite = _export(gpt, tmp_path, precision)
    bundle = litertlm_bundle(tflite, tmp_path / "gpt.litertlm")
    prompt = "def main"
    generated = encode_text(_litert_lm_generates(bundle, prompt)).tolist()
    assert len(generated) >= 32  # it ran to the end of the cache or to the stop token (id 0)
    model = runner.open_decoder(str(tflite))
    # Teacher-force LiteRT-LM's tokens through the runner: each is the runner's greedy choice at that point.
    logits, margins = model.prefill(encode_text(prompt))[-1], []
    for step, token in enumerate(generated):
        best = int(np.argmax(logits))
        margins.append(float(np.sort(logits)[-1] - np.sort(logits)[-2]))
        assert token == best or logits[best] - logits[token] < TIE, (step, decode_ids([best]), decode_ids([token]))
        logits = model.decode(token)
    # Up to the runner's first near-tie, the two continuations are the same tokens.
    clear = next((i for i, m in enumerate(margins) if m < TIE), len(margins))
    assert clear >= 16
    model.reset()
    assert generated[:clear] == runner.greedy(model, encode_text(prompt), clear)


def test_the_cli_bundles_a_tflite_and_an_onnx_file(tflite, tmp_path):
    from typer.testing import CliRunner

    from edgepress.cli import app

    cli = CliRunner()
    result = cli.invoke(app, ["bundle", str(tflite), "-o", str(tmp_path / "gpt.litertlm")])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (tmp_path / "gpt.litertlm").stat().st_size > tflite.stat().st_size
    onnx = export(ExportRequest(DecoderSource(build_char_gpt(width=16, layers=1, heads=2, max_len=32), window=16),
                                tmp_path / "small.onnx", "onnx", "fp32", cache_len=32, prompt_len=4)).path
    result = cli.invoke(app, ["bundle", str(onnx)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "small-genai").iterdir()} == {"model.onnx", "genai_config.json",
                                                                     "tokenizer.json", "tokenizer_config.json"}
    result = cli.invoke(app, ["bundle", str(tmp_path / "missing.tflite")])
    assert result.exit_code == 2 and "give a decoder .tflite or .onnx file" in result.output
    # Another vocabulary needs its own tokenizer.json.
    other = DecoderSource(build_char_gpt(vocab=27, width=16, layers=1, heads=2, max_len=32), window=16)
    small = export(ExportRequest(other, tmp_path / "abc.tflite", "tflite", "fp32", cache_len=32, prompt_len=4)).path
    result = cli.invoke(app, ["bundle", str(small)])
    assert result.exit_code == 2 and "--tokenizer" in " ".join(result.output.split())
    (tmp_path / "abc.json").write_text(json.dumps(char_tokenizer("abcdefghijklmnopqrstuvwxyz")))
    result = cli.invoke(app, ["bundle", str(small), "--tokenizer", str(tmp_path / "abc.json")])
    assert result.exit_code == 0, result.output
    assert litert_lm.Engine(str(tmp_path / "abc.litertlm")).tokenize("cab") == [3, 1, 2]


def test_a_file_litert_lm_cannot_run_is_refused(tmp_path):
    import litert_torch
    import torch

    path = tmp_path / "linear.tflite"
    litert_torch.convert(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),)).export(str(path))
    with pytest.raises(EdgepressError, match="not a decoder LiteRT-LM can run"):
        litertlm_bundle(path, tmp_path / "linear.litertlm")
    assert not list(tmp_path.glob("*.litertlm"))
