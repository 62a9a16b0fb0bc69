"""TFLite int4 in blocks on a decoder whose output head is its token table (`tie`): that one matrix is read by the
EMBEDDING_LOOKUP and by the head's FULLY_CONNECTED, and LiteRT's quantizer cannot give one tensor two granularities
(it failed with "can only concatenate str (not bytes) to str", so the export ended in exit 2). The tied head keeps
per-channel int4 like the table; every other FULLY_CONNECTED whose width the block divides is blockwise. Real
litert-torch, LiteRT's quantizer and LiteRT."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.deploy.registry import ExportRequest, export  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt, train_char_gpt  # noqa: E402
from edgepress.models.datasets import load_dataset  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402


def test_a_tied_decoder_exports_blockwise_int4_with_its_head_per_channel(tmp_path):
    text = load_dataset("python_source", train_size=200, test_size=4)
    model = build_char_gpt(width=32, layers=1, heads=2, max_len=96, tie=True)
    train_char_gpt(model, text.x_train, text.y_train, epochs=1, batch_size=32, learning_rate=1e-2)
    made = export(ExportRequest(DecoderSource(model, window=64), tmp_path / "gpt_int4.tflite", "tflite", "int4_weight",
                                check_data=text.x_test[:2], cache_len=72, prompt_len=8, block_size=32))
    facts = made.quantization
    assert facts["granularity"] == "blockwise" and facts["block_size"] == 32
    blockwise = facts["blockwise_ops"]
    assert any("Linear_qkv" in name for name in blockwise) and any("Linear_down" in name for name in blockwise)
    assert not any("logits" in name for name in blockwise), blockwise  # the tied head: per channel
    assert (tmp_path / "gpt_int4.tflite").exists()
