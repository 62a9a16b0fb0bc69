"""A Hugging Face model directory as input: a tiny random Llama made here with transformers (no download), read by
edgepress as data (config.json + model.safetensors), computing what transformers computes, and exported with its KV
cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgepress.deploy.registry import ExportRequest, export  # noqa: E402
from edgepress.errors import EdgepressError  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402
from edgepress.models.loading import open_model  # noqa: E402


def _llama(path, **overrides):
    settings = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=96, rope_theta=10000.0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides})).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tiny-llama"
    return path, _llama(path)


def test_the_directory_computes_what_transformers_computes(llama):
    path, reference = llama
    source = open_model(path)
    assert isinstance(source, DecoderSource) and source.max_len == 96 and source.input_shape == (None, None)
    tokens = np.random.default_rng(0).integers(0, 128, (2, 40))
    with torch.no_grad():
        expected = reference(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(source.predict(tokens.astype(np.float32)), expected, atol=1e-4)


def test_tied_embeddings_and_a_round_trip(tmp_path):
    reference = _llama(tmp_path / "tied", tie_word_embeddings=True, num_key_value_heads=4)
    source = open_model(tmp_path / "tied").with_input_shape([16])
    source.write(tmp_path / "again")
    again = open_model(tmp_path / "again")
    assert again.input_shape == (None, 16)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == "llama"
    tokens = np.arange(16)[None] % 128
    with torch.no_grad():
        expected = reference(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(again.predict(tokens.astype(np.float32)), expected, atol=1e-4)
    # transformers reads what edgepress wrote
    assert transformers.LlamaForCausalLM.from_pretrained(tmp_path / "again").config.tie_word_embeddings


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_exports_with_a_kv_cache(llama, tmp_path, fmt):
    pytest.importorskip("litert_torch")
    path, _ = llama
    source = open_model(path).with_input_shape([32])
    x = np.random.default_rng(1).integers(0, 128, (2, 32)).astype(np.float32)
    artifact = export(ExportRequest(source, tmp_path / f"llama.{fmt}", fmt, "fp32", check_data=x, cache_len=48,
                                    prompt_len=8))
    assert artifact.check["top1_agreement"] == 1.0 and artifact.check["max_abs_diff"] < 1e-4
    assert artifact.check["greedy_agree_tokens"] == 16


def test_what_edgepress_cannot_read_is_refused(tmp_path):
    _llama(tmp_path / "scaled", rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(EdgepressError, match="rotary scaling 'linear'"):
        open_model(tmp_path / "scaled")
    _llama(tmp_path / "wrong")
    settings = json.loads((tmp_path / "wrong" / "config.json").read_text())
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({**settings, "num_hidden_layers": 3}))
    with pytest.raises(EdgepressError, match="missing model.layers.2"):
        open_model(tmp_path / "wrong")
