"""Magnitude `prune` on attention encoders (tests/models/encoders.py): tf_keras through tfmot (its registry wraps
MultiHeadAttention's four projections), Keras 3 and a PyTorch program natively (prune_native: masks on the kernels,
recomputed on tfmot's schedule while fine-tuning). Each: prune + TFLite int8 + ONNX fp32 through the CLI, exit 0,
every file checked and measured, the sparsity measured on the kernels, attention projections included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgepress.cli import app
from tests.models import encoders

DIGITS = {"dataset": "digits", "train_size": 64, "test_size": 40, "calibration_samples": 10, "check_samples": 10}
MEASURE = {"runs": 3, "warmup": 1, "target_ci_width": None}
MAKERS = {"keras3": (encoders.keras3_encoder, "enc.keras"), "tf_keras": (encoders.tf_keras_encoder, "enc.keras"),
          "torch": (encoders.torch_encoder, "enc.pt2")}


@pytest.mark.parametrize("kind", ["keras3", "tf_keras", "torch"])
def test_an_attention_encoder_is_magnitude_pruned_and_exported(kind, tmp_path):
    make, name = MAKERS[kind]
    make(tmp_path / name, epochs=4)
    recipe = {"name": "enc", "model": {"path": str(tmp_path / name)}, "data": DIGITS, "measure": MEASURE,
              "steps": [{"type": "prune", "target_sparsity": 0.5, "fine_tune_epochs": 1, "batch_size": 32}],
              "exports": [{"format": "tflite", "precision": "int8"}, {"format": "onnx", "precision": "fp32"}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    source, pruned = results["models"]
    assert source["sparsity"] < 0.05 and 0.45 <= pruned["sparsity"] <= 0.55, (source, pruned)
    assert pruned["params"] == source["params"]  # magnitude pruning zeroes weights, it removes none
    rows = {(a["format"], a["precision"]): a for a in results["artifacts"]}
    assert set(rows) == {("tflite", "int8"), ("onnx", "fp32")}
    for key, row in rows.items():
        assert row["latency"]["p50"] > 0 and row["check"]["samples"] == DIGITS["check_samples"], key
    assert rows[("onnx", "fp32")]["check"]["max_abs_diff"] < 1e-3
    assert rows[("tflite", "int8")]["check"]["top1_agreement"] >= 0.7
    if kind != "torch":  # the attention's own projections are pruned too, not only the Dense layers around it
        from edgepress.models.loading import load_model

        model = load_model(tmp_path / "run" / "models" / "1-prune.keras")
        kernels = [np.asarray(v) for v in model.get_layer("mha").weights if v.name.split("/")[-1].startswith("kernel")]
        assert len(kernels) == 4 and all(0.4 <= float((k == 0).mean()) <= 0.6 for k in kernels)


def test_the_mask_zeroes_the_smallest_weights_or_m_of_every_n_along_the_input_axis():
    from edgepress.compress.prune_native import mask

    w = np.random.default_rng(0).normal(size=(6, 8)).astype("float32")
    m = mask(w, 0.5)
    assert m.sum() == 24 and np.abs(w[m == 0]).max() <= np.abs(w[m == 1]).min()
    pattern = mask(w, 0.5, (2, 4), axis=1)  # (out, in): groups of 4 consecutive inputs, 2 zeros in each
    groups, weights = pattern.reshape(6, 2, 4), np.abs(w).reshape(6, 2, 4)
    assert (groups.sum(-1) == 2).all()
    assert (np.where(groups == 0, weights, -1).max(-1) <= np.where(groups == 1, weights, np.inf).min(-1)).all()


def test_m_by_n_on_a_keras3_attention_layer_is_refused_naming_it():
    import keras

    from edgepress.compress.prune import Prune, PruneConfig
    from edgepress.compress.step import StepContext
    from edgepress.errors import EdgepressError

    model = encoders._keras_encoder(keras, "k3_encoder")
    with pytest.raises(EdgepressError, match="'mha' \\(MultiHeadAttention\\).*layers: \\[embed, ln1, ln2, mlp_up"):
        Prune().check(model, PruneConfig(sparsity_m_by_n=(2, 4)), StepContext())
    Prune().check(model, PruneConfig(sparsity_m_by_n=(2, 4), layers=["mlp_up", "mlp_down"]), StepContext())
