"""A real LM runtime on edgepress's files: onnxruntime-genai loads a decoder .onnx edgepress exported (fp32 and
int4 MatMulNBits), with the genai_config.json edgepress writes, and generates the greedy continuation edgepress's
runner generates: from token ids, and from a text prompt through genai's own tokenizer reading the tokenizer.json
edgepress writes (python_source's characters)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
og = pytest.importorskip("onnxruntime_genai")

from edgepress.deploy import runner  # noqa: E402
from edgepress.deploy.genai import genai_folder  # noqa: E402
from edgepress.deploy.registry import ExportRequest, export  # noqa: E402
from edgepress.deploy.tokenizer import char_tokenizer  # noqa: E402
from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt  # noqa: E402
from edgepress.models.datasets import decode_ids, encode_text  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402

CACHE = 64


@pytest.fixture(scope="module")
def gpt():
    # Random weights: a continuation that changes token to token (a briefly trained one repeats spaces), so an
    # off-by-one position or a dropped cache entry shows.
    return DecoderSource(build_char_gpt(width=32, layers=2, heads=2, max_len=96, seed=3), window=64)


@pytest.mark.parametrize("precision", ["fp32", "int4_weight"])
def test_onnxruntime_genai_generates_what_the_runner_generates(gpt, tmp_path, precision):
    artifact = export(ExportRequest(gpt, tmp_path / f"gpt_{precision}.onnx", "onnx", precision, cache_len=CACHE,
                                    prompt_len=8))
    folder = genai_folder(artifact.path, tmp_path / "genai")
    prompt = encode_text("def main(")
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=CACHE)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt.astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    generated = [int(t) for t in generator.get_sequence(0)][len(prompt):]
    ours = runner.greedy(runner.open_decoder(str(artifact.path)), prompt, CACHE - len(prompt))
    # genai stops at the end of the cache, or at an id 0 (the config's end of text, an unknown character), which
    # its sequence leaves out.
    assert generated == ours[: len(generated)] and len(set(generated)) > 5
    assert len(generated) == CACHE - len(prompt) or ours[len(generated)] == 0 and 0 not in generated


def test_genai_tokenizes_text_with_the_tokenizer_json_and_generates_what_the_runner_generates(gpt, tmp_path):
    artifact = export(ExportRequest(gpt, tmp_path / "gpt_fp32.onnx", "onnx", "fp32", cache_len=CACHE, prompt_len=8))
    folder = genai_folder(artifact.path, tmp_path / "genai")
    assert (folder / "tokenizer.json").is_file()  # written by default: the file's vocabulary is python_source's
    text = "def main(argv):\n    return"
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    prompt = np.asarray(tokenizer.encode(text))
    assert prompt.tolist() == encode_text(text).tolist()  # genai's tokenizer reads characters as edgepress does
    assert tokenizer.decode(prompt) == text
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=CACHE)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    generated = [int(t) for t in generator.get_sequence(0)][len(prompt):]
    ours = runner.greedy(runner.open_decoder(str(artifact.path)), encode_text(text), CACHE - len(prompt))
    assert generated == ours[: len(generated)] and len(generated) > 5
    assert tokenizer.decode(np.asarray(generated, np.int32)) == decode_ids(generated).replace("\ufffd", "")


def test_the_tokenizer_json_is_hugging_face_tokenizers_own():
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_str(json.dumps(char_tokenizer()))
    text = "class A:\n    def f(self, x='~'):  # ok\n"
    assert tokenizer.encode(text).ids == encode_text(text).tolist()
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_a_file_that_is_not_a_decoder_is_refused(tmp_path):
    import torch

    path = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), input_names=["x"], dynamo=False)
    with pytest.raises(EdgepressError, match="not a decoder"):
        genai_folder(path, tmp_path / "genai")
    assert not (tmp_path / "genai").exists()
