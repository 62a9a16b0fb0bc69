"""Where a small decoder's bytes go, and that its int4 files hold every table in int4: the TFLite file's inner tensors
carry short names (litert-torch writes the Python module path for every tensor of both signatures), and the ONNX
int4 file's token and position tables are int4 (GatherBlockQuantized) beside its MatMulNBits weights, at the opset
the model was made at. Real litert-torch, torch.onnx, LiteRT, onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.deploy.registry import ExportRequest, export  # noqa: E402
from edgepress.models.char_gpt import build_char_gpt, train_char_gpt  # noqa: E402
from edgepress.models.datasets import load_dataset  # noqa: E402
from edgepress.models.decoder import DecoderSource  # noqa: E402

CACHE, PROMPT, WIDTH, POSITIONS = 72, 8, 32, 96


@pytest.fixture(scope="module")
def text():
    return load_dataset("python_source", train_size=300, test_size=6)


@pytest.fixture(scope="module")
def files(text, tmp_path_factory):
    model = build_char_gpt(width=WIDTH, layers=1, heads=2, max_len=POSITIONS)
    train_char_gpt(model, text.x_train, text.y_train, epochs=1, batch_size=32, learning_rate=1e-2)
    source, out = DecoderSource(model, window=64), tmp_path_factory.mktemp("lmsize")
    made = {}
    for fmt, precision in (("tflite", "fp32"), ("tflite", "int4_weight"), ("onnx", "fp32"), ("onnx", "int4_weight")):
        made[fmt, precision] = export(ExportRequest(source, out / f"gpt_{precision}.{fmt}", fmt, precision,
                                                    check_data=text.x_test[:2], cache_len=CACHE, prompt_len=PROMPT))
    return made


def test_tflite_tensors_get_short_names_and_the_file_still_computes_the_model(files):
    from ai_edge_litert.tools import flatbuffer_utils

    for precision in ("fp32", "int4_weight"):
        artifact = files["tflite", precision]
        model = flatbuffer_utils.read_model(str(artifact.path))
        names = [t.name.decode() for g in model.subgraphs for t in g.tensors]
        assert not any("edgepress.deploy.decoder" in n or "torch.nn.modules" in n for n in names), names[:5]
        assert any(n.startswith("Block_0/Linear_qkv") for n in names)
        assert len(set(names)) == len(names)  # unique in the file: LiteRT's quantizer keys tensors by name
    fp32 = files["tflite", "fp32"]
    assert "bytes fewer" in fp32.quantization["tensor_names"]
    # The signatures' own names stay (LiteRT-LM finds the cache by them).
    assert {i.name for i in fp32.inputs} == {"decode:tokens", "decode:input_pos", "decode:kv_cache_k_0",
                                             "decode:kv_cache_v_0"}
    assert fp32.check["top1_agreement"] == 1.0 and fp32.check["max_abs_diff"] < 1e-4
    assert fp32.check["greedy_agree_tokens"] == fp32.check["greedy_tokens"]
    assert files["tflite", "int4_weight"].check["top1_agreement"] > 0.8


def test_onnx_int4_holds_the_token_and_position_tables_in_int4(files):
    import onnx
    from onnx import TensorProto

    artifact = files["onnx", "int4_weight"]
    assert sorted(artifact.quantization["gather_block_quantized"]) == ["/embed/Gather_Q4", "/positions/Gather_Q4"]
    model = onnx.load(str(artifact.path))
    assert next(o.version for o in model.opset_import if o.domain == "") == 17  # the model's own opset
    floats = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    # What stays float is small: norms' weights and the int4 blocks' scales, no table of the vocabulary or positions.
    assert max(floats.values()) < 97 * WIDTH / 8, sorted(floats.items(), key=lambda kv: -kv[1])[:3]
    fp32 = files["onnx", "fp32"]
    # With its tables float this file would be over half the fp32 one (0.53 at this size); int4 makes it 0.31.
    assert artifact.bytes < 0.35 * fp32.bytes, (artifact.bytes, fp32.bytes)
    check = artifact.check
    assert check["top1_agreement"] > 0.8 and 0 < check["log_likelihood_abs_diff"] < 0.2, check
