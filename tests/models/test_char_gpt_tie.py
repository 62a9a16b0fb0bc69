"""char_gpt's `tie` knob: the output head is the token table. It trains as one matrix, its model directory holds the
table once and reads back the same tied model, and its exports (TFLite prefill/decode, ONNX past/present, int4)
compute it token by token. Real torch, safetensors, litert-torch, torch.onnx, LiteRT and onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.deploy.registry import ExportRequest, export  # noqa: E402
from edgepress.models import zoo  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt, train_char_gpt  # noqa: E402
from edgepress.models.datasets import load_dataset  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402


@pytest.fixture(scope="module")
def text():
    return load_dataset("python_source", train_size=300, test_size=6)


@pytest.fixture(scope="module")
def tied(text):
    model = build_char_gpt(width=32, layers=1, heads=2, max_len=96, tie=True)
    train_char_gpt(model, text.x_train, text.y_train, epochs=1, batch_size=32, learning_rate=1e-2)
    return model


def test_a_tied_head_is_the_token_table_and_trains_as_one(tied):
    untied = build_char_gpt(width=32, layers=1, heads=2, max_len=96)
    assert tied.head.weight is tied.embed.weight
    count = sum(p.numel() for p in tied.parameters())
    assert count == sum(p.numel() for p in untied.parameters()) - 97 * 32
    assert not untied.config.tie and untied.head.weight is not untied.embed.weight  # the default: two matrices


def test_the_model_directory_holds_the_table_once_and_reads_back_tied(tied, text, tmp_path):
    from safetensors import safe_open

    DecoderSource(tied, window=64).write(tmp_path / "gpt")
    assert json.loads((tmp_path / "gpt" / "config.json").read_text())["tie"] is True
    with safe_open(str(tmp_path / "gpt" / "model.safetensors"), "pt") as f:
        assert "embed.weight" in f.keys() and "head.weight" not in f.keys()
    again = DecoderSource.load(tmp_path / "gpt").module
    assert again.head.weight is again.embed.weight
    tokens = torch.from_numpy(text.x_test[:2].astype(np.int64))
    with torch.no_grad():
        assert torch.equal(again(tokens), tied(tokens))


def test_tied_exports_compute_the_model_token_by_token(tied, text, tmp_path):
    source = DecoderSource(tied, window=64)
    for fmt, precision in (("tflite", "fp32"), ("onnx", "fp32"), ("tflite", "int4_weight"), ("onnx", "int4_weight")):
        artifact = export(ExportRequest(source, tmp_path / f"gpt_{precision}.{fmt}", fmt, precision,
                                        check_data=text.x_test[:2], cache_len=72, prompt_len=8))
        check = artifact.check
        if precision == "fp32":
            assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4, (fmt, check)
        else:
            assert check["top1_agreement"] > 0.8 and 0 < check["log_likelihood_abs_diff"] < 0.2, (fmt, check)


def test_the_zoo_char_gpt_small_is_tied():
    model = zoo.build("char_gpt_small", num_classes=97)
    assert model.config.tie and model.head.weight is model.embed.weight
