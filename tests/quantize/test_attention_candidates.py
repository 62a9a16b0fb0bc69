"""Accuracy-aware int8 on a tiny attention encoder: LayerNorm, softmax and GELU outputs are the search's first
candidates for float, before whole layers; results.json records which were kept; int8_macs counts both attention
matmuls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from edgepress.deploy.coverage import int8_macs
from tests.models import encoders

DIGITS = {"dataset": "digits", "train_size": 300, "test_size": 60, "calibration_samples": 30, "check_samples": 20}


@pytest.fixture(scope="module")
def outlier_encoder(tmp_path_factory):
    """The Keras 3 encoder with one huge channel out of `ln2` (its gamma and beta times 500, mlp_up's weights that
    read it divided by 500): the float model computes the same, and per-tensor int8 of that output breaks it."""
    path = tmp_path_factory.mktemp("enc") / "enc.keras"
    model = encoders.keras3_encoder(path)
    gamma, beta = model.get_layer("ln2").get_weights()
    kernel, bias = model.get_layer("mlp_up").get_weights()
    gamma[0], beta[0], kernel[0] = gamma[0] * 500, beta[0] * 500, kernel[0] / 500
    model.get_layer("ln2").set_weights([gamma, beta])
    model.get_layer("mlp_up").set_weights([kernel, bias])
    model.save(path)
    return path


def test_layernorm_softmax_and_gelu_outputs_are_tried_in_float_before_whole_layers(outlier_encoder, tmp_path):
    recipe = {"name": "enc", "model": {"path": str(outlier_encoder)}, "data": DIGITS,
              "measure": {"runs": 2, "warmup": 1, "target_ci_width": None},
              "exports": [{"format": "tflite", "precision": "int8",
                           "quantize": {"max_accuracy_drop": 0.0, "search": "linear", "max_float_layers": 6,
                                        "equalize": False, "bias_correction": False}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "run")])
    assert result.exit_code in (0, 1), result.output  # 1: a budget not met is a failed gate, not an error
    (export,) = json.loads((tmp_path / "run" / "sensitivity.json").read_text())["exports"]
    outputs = {s["layer"]: s["output"] for s in export["sensitivity"] if s["output"]}
    assert outputs["ln1"] == outputs["ln2"] == "layernorm"
    assert "softmax" in outputs.values() and "gelu" in outputs.values()
    softmax = next(name for name, kind in outputs.items() if kind == "softmax")
    assert "mha" in softmax and softmax != "mha"  # the softmax op alone, not the whole attention layer
    # The search keeps outputs in float first (bias correction, a remedy tried before any, is off here): its first
    # trial keeps the most sensitive output, not a layer.
    full, first, *_ = export["trials"]
    assert full["float_layers"] == [] and not full["meets_budget"]
    (kept,) = first["float_layers"]
    assert kept["output"] in ("layernorm", "softmax", "gelu")
    ranked = [s for s in export["sensitivity"] if s["output"] and s["error"]]
    assert kept["layer"] == max(ranked, key=lambda s: s["error"])["layer"]
    # results.json records, on the chosen artifact's row, which outputs and layers stayed float.
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    chosen = next(a for a in results["artifacts"] if a.get("accuracy_aware", {}).get("role") == "final")
    assert [r["layer"] for r in chosen["float_layers"]] == [r["layer"] for r in next(
        t for t in export["trials"] if t["artifact"] == export["chosen"])["float_layers"]]
    assert all("output" in r for r in chosen["float_layers"])


def test_int8_macs_counts_both_attention_matmuls(outlier_encoder, tmp_path):
    from edgepress.deploy import export_tflite
    from edgepress.models.loading import open_model
    from tests.models.encoders import HEAD_DIM, HEADS

    x, _ = encoders.digits_rows(40)
    artifact = export_tflite(open_model(outlier_encoder), tmp_path / "enc_int8.tflite", "int8",
                             calibration=x.astype(np.float32))
    counted = int8_macs(artifact.path)
    matmuls = [op for op in counted["ops"] if op["op"] == "BATCH_MATMUL"]
    # query x key and probabilities x value: heads x 8 x 8 x head_dim MACs each, in int8 kernels
    assert sum(op["macs"] for op in matmuls) == 2 * HEADS * 8 * 8 * HEAD_DIM
    assert all(op["kind"] == "integer" for op in matmuls) and counted["int8_macs"] > 0.9


def test_onnx_keeps_layernorm_and_softmax_outputs_in_float_first(outlier_encoder, tmp_path):
    """onnxruntime quantizes the LayerNorm ops and the softmax (not the exact GELU's Erf): those are the first
    candidates, the softmax by its own node."""
    from edgepress.models.loading import open_model
    from edgepress.quantize import quantize_to_budget

    x, y = encoders.digits_rows(300)
    x = x.astype(np.float32)
    result = quantize_to_budget(open_model(outlier_encoder), "onnx", tmp_path, x[:30], x[200:], y[200:],
                                max_accuracy_drop=0.0, equalize=False, max_float_layers=2,
                                calibration={"method": "minmax"})
    outputs = {s.layer: s.output for s in result.sensitivity if s.output}
    assert outputs["ln1"] == outputs["ln2"] == "layernorm"
    (softmax,) = [name for name, kind in outputs.items() if kind == "softmax"]
    assert softmax != "mha"
    tried = [t.float_layers for t in result.trials if t.float_layers]
    assert all(outputs.get(layer) for layer in tried[0])  # outputs go float before any whole layer
