"""A decoder's ONNX file names its inner values briefly (torch.onnx wrote each value's module path where it is made
and where it is used) and still computes its model: real torch.onnx, onnx, onnxruntime."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from edgepress.deploy.decoder import short_value_names  # noqa: E402
from edgepress.deploy.registry import ExportRequest, export  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt  # noqa: E402
from edgepress.models.datasets import load_dataset  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402


def test_inner_values_get_short_names_and_the_file_still_computes_the_model(tmp_path):
    import onnx

    text = load_dataset("python_source", train_size=10, test_size=4)
    source = DecoderSource(build_char_gpt(width=32, layers=1, heads=2, max_len=96), window=64)
    artifact = export(ExportRequest(source, tmp_path / "gpt.onnx", "onnx", "fp32", check_data=text.x_test[:2],
                                    cache_len=72, prompt_len=8))
    assert "bytes fewer" in artifact.quantization["value_names"]
    model = onnx.load(str(artifact.path))
    graph = model.graph
    io = {v.name for v in (*graph.input, *graph.output)}
    inner = {x for n in graph.node for x in (*n.input, *n.output) if x and x not in io}
    assert inner and all(name.startswith("v") and len(name) <= 4 for name in inner), sorted(inner)[:5]
    assert io == {"input_ids", "past_key_values.0.key", "past_key_values.0.value", "logits", "present.0.key",
                  "present.0.value"}  # onnxruntime-genai finds the model's inputs and outputs by these
    assert any(n.name.startswith("/") for n in graph.node)  # node names stay: a profile names its nodes
    check = artifact.check
    assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4, check
    onnx.checker.check_model(model)
    assert short_value_names(model) == 0  # already short: nothing left to save
