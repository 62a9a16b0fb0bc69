"""qat on PyTorch programs (PT2E, litert-torch's quantizer): the tests' encoder (nn.TransformerEncoder, GELU,
norm_first, a `.pt2` at batch 1) and a small CNN (dynamic batch) are trained quantization-aware and exported as
full-integer TFLite (converted as they are, with the learned ranges) and QDQ ONNX, each checked and measured; what
it cannot do is refused in the plan, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from tests.models import encoders

DIGITS = {"dataset": "digits", "train_size": 300, "test_size": 100, "calibration_samples": 20, "check_samples": 20}
MEASURE = {"runs": 3, "warmup": 1, "target_ci_width": None}
QAT = {"type": "qat", "fine_tune_epochs": 1, "batch_size": 32, "learning_rate": 0.0002}
EXPORTS = [{"format": "tflite", "precision": "int8"}, {"format": "onnx", "precision": "int8_static"},
           {"format": "onnx", "precision": "fp32"}]
cli = CliRunner()


def _run(tmp_path, model: Path, steps: list[dict], exports=EXPORTS, name: str = "run"):
    recipe = {"name": model.stem, "model": {"path": str(model)}, "data": DIGITS, "measure": MEASURE, "steps": steps,
              "exports": exports}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    return cli.invoke(app, ["run", str(tmp_path / f"{name}.yaml"), "-o", str(tmp_path / name)])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "enc.pt2"
    encoders.torch_encoder(path, epochs=15)
    return path


def _cnn(path: Path) -> Path:
    """Conv + BN + ReLU, pooling, conv, a linear head, on the 8x8 digits: trained briefly, saved at a dynamic batch."""
    import torch
    from torch import nn

    from edgepress.models.datasets import load_dataset
    from edgepress.models.torch_program import save_torch_program

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    data = load_dataset("digits", test_size=60).fit_to((1, 8, 8))
    x = torch.from_numpy(data.x_train[:300].astype(np.float32))
    y = torch.from_numpy(data.y_train[:300].astype(np.int64))
    optimizer = torch.optim.Adam(module.parameters(), 3e-3)
    for _ in range(10):
        for start in range(0, len(x), 32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(x[start:start + 32]), y[start:start + 32]).backward()
            optimizer.step()
    return save_torch_program(module.eval(), x[:2], path)


def _checked(tmp_path, result, name: str = "run") -> tuple[dict, dict, dict]:
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / name / "results.json").read_text())
    source, tuned = results["models"][0], results["models"][-1]
    rows = {(a["format"], a["precision"]): a for a in results["artifacts"]}
    for key, row in rows.items():
        assert Path(row["path"]).exists() and row["latency"]["p50"] > 0, key
        assert row["check"]["samples"] == DIGITS["check_samples"], key
    return source, tuned, rows


def test_a_pytorch_encoder_trains_quantization_aware_and_exports_full_integer_tflite_and_qdq_onnx(tmp_path, encoder):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    source, tuned, rows = _checked(tmp_path, _run(tmp_path, encoder, [QAT]))
    # embed, the attention's in_proj and out_proj, the MLP's two, the head
    assert tuned["qat"]["weights_quantized"] == 6
    assert tuned["accuracy"] >= source["accuracy"] - 0.05
    tflite = rows[("tflite", "int8")]
    assert tflite["quantization"]["activations"] == "int8 (ranges learned by qat)"
    assert "calibration_samples" not in tflite["quantization"]  # converted as it is, no calibration
    # Every MAC in int8, the two matmuls inside scaled_dot_product_attention included (litert-torch's quantizer alone
    # leaves them float: 89.6%).
    assert tuned["qat"]["attention_matmuls"] == 2 and tuned["qat"]["attention_float"] == []
    assert tflite["quantization"]["int8_macs"] == 1.0
    from edgepress.deploy.coverage import int8_macs

    kinds = [op["kind"] for op in int8_macs(tflite["path"])["ops"] if op["op"] == "BATCH_MATMUL"]
    assert kinds == ["integer", "integer"]
    # The file is what QAT trained: it agrees with the program, and scores as it does.
    assert tflite["check"]["top1_agreement"] >= 0.9
    assert tflite["metrics"]["accuracy"] >= tuned["accuracy"] - 0.03
    interpreter = Interpreter(tflite["path"])
    assert interpreter.get_input_details()[0]["dtype"] == np.int8  # full integer: int8 in, int8 out
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    for key in (("onnx", "int8_static"), ("onnx", "fp32")):
        row = rows[key]
        assert row["quantization"].get("activations", "int8 (ranges learned by qat)") == \
            "int8 (ranges learned by qat)", key
        assert row["check"]["top1_agreement"] >= 0.9, key
        ops = [node.op_type for node in onnx.load(row["path"]).graph.node]
        assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10, key
    # The run's model is a .pt2 program holding the quantize / dequantize pairs, and loads as one.
    from edgepress.models.torch_program import TorchSource

    written = TorchSource(tmp_path / "run" / "models" / "1-qat.pt2")
    assert written.quantize_aware and written.fixed_batch == 1
    from edgepress.compress.qat import QatConfig
    from edgepress.compress.qat_torch import check
    from edgepress.errors import EdgepressError

    with pytest.raises(EdgepressError, match="already quantization-aware"):  # qat twice
        check(written, QatConfig())


def test_a_program_without_linear_or_conv_layers_is_refused():
    import torch

    from edgepress.compress.qat import QatConfig
    from edgepress.compress.qat_torch import check
    from edgepress.errors import EdgepressError
    from edgepress.models.torch_program import TorchSource

    program = TorchSource.from_module(torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Flatten()),
                                      torch.zeros(2, 1, 8, 8))
    with pytest.raises(EdgepressError, match="no linear or conv layer"):
        check(program, QatConfig())


def test_a_small_cnn_with_batch_norm_trains_quantization_aware_at_a_dynamic_batch(tmp_path):
    model = _cnn(tmp_path / "cnn.pt2")
    exports = [{"format": "tflite", "precision": "int8"}, {"format": "onnx", "precision": "int8_static"}]
    source, tuned, rows = _checked(tmp_path, _run(tmp_path, model, [QAT], exports))
    assert tuned["qat"]["weights_quantized"] == 3
    assert tuned["accuracy"] >= source["accuracy"] - 0.05
    tflite = rows[("tflite", "int8")]
    assert tflite["quantization"]["int8_macs"] >= 0.9
    assert tflite["check"]["top1_agreement"] >= 0.9
    assert tflite["metrics"]["accuracy"] >= tuned["accuracy"] - 0.03
    from edgepress.deploy.signature import signature

    (first, *_), _ = signature(Path(rows[("onnx", "int8_static")]["path"]))
    assert first.shape[0] in (None, "batch", -1) or not isinstance(first.shape[0], int)  # the batch stays dynamic


def test_prune_then_qat_keeps_the_zeros_of_a_pytorch_program(tmp_path, encoder):
    steps = [{"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1, "batch_size": 32}, QAT]
    source, tuned, rows = _checked(tmp_path, _run(tmp_path, encoder, steps, [{"format": "tflite",
                                                                            "precision": "int8"}]))
    assert tuned["qat"]["preserve"] == "sparsity"  # `preserve: auto` right after prune
    assert tuned["sparsity"] >= 0.45


@pytest.mark.parametrize("step, export, words", [
    ({"layers": ["head"]}, {"format": "onnx", "precision": "int8_static"}, ["`layers`", "Remove `layers`"]),
    ({"preserve": "clusters"}, {"format": "onnx", "precision": "int8_static"},
     ["preserve: clusters", "preserve: none"]),
    ({}, {"format": "tflite", "precision": "dynamic"}, ["tflite dynamic", "went through qat", "tflite int8"]),
    ({}, {"format": "tflite", "precision": "fp32"}, ["qat", "tflite fp32"]),
    ({}, {"format": "tflite", "precision": "int8", "float_ops": ["attention"]}, ["float_ops", "went through qat"]),
])
def test_what_pytorch_qat_cannot_do_is_refused_in_the_plan(tmp_path, encoder, step, export, words):
    result = _run(tmp_path, encoder, [{**QAT, **step}], [export])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in message, (word, message)
    assert not (tmp_path / "run").exists()


def test_a_pytorch_gru_is_refused_naming_it_and_what_applies(tmp_path):
    from edgepress.compress.qat import QatConfig
    from edgepress.compress.qat_torch import check
    from edgepress.errors import EdgepressError
    from edgepress.models.torch_program import TorchSource
    from tests.models.families import save_model

    program = TorchSource(save_model("torch", "gru", tmp_path))
    with pytest.raises(EdgepressError, match=r"GRU \(aten.gru\).*onnx int8_dynamic"):
        check(program, QatConfig())
