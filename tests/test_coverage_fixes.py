"""Bugs the layer coverage table found (exit 70 before), each now a refusal in the plan or fixed: an Embedding that
reads integer token ids under qat, and a PyTorch program with an embedding exported as TFLite dynamic or int8."""

from __future__ import annotations

import pytest

import edgepress
from edgepress.errors import EdgepressError
from edgepress.plan import make_plan
from tests.coverage_table import DATA, MEASURE, STEPS, WORKS, attempt
from tests.models.families import save_model, token_data


def _recipe(model, data, steps, exports):
    return {"name": "tokens", "model": {"path": str(model)}, "data": data, "steps": steps, "measure": MEASURE,
            "exports": [{"format": f, "precision": p} for f, p in exports]}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokens")
    return {"dataset": "npz", "path": str(token_data(folder / "tokens.npz"))} | DATA


def test_qat_of_an_embedding_reading_token_ids_is_refused_in_the_plan_and_the_other_layers_train(tmp_path, tokens):
    model = save_model("tf_keras", "embedding", tmp_path / "model")
    recipe = _recipe(model, tokens, [STEPS["qat"]], [("tflite", "int8")])
    with pytest.raises(EdgepressError, match=r"'embedding' \(Embedding\) reads the model's integer input .*"
                                             r"`layers: \[pool, head\]`"):
        make_plan(edgepress.Recipe.from_dict(recipe), tmp_path / "plan")
    assert not (tmp_path / "plan").exists()
    # What the message offers works: the embedding stays float, the rest is trained quantization-aware.
    recipe["steps"] = [{**STEPS["qat"], "layers": ["pool", "head"]}]
    assert attempt(recipe, tmp_path / "run", tmp_path).text == WORKS


def test_a_pytorch_embedding_is_refused_as_tflite_dynamic_and_calibrates_int8_on_token_ids(tmp_path, tokens):
    model = save_model("torch", "embedding", tmp_path / "model")
    refused = attempt(_recipe(model, tokens, [], [("tflite", "dynamic")]), tmp_path / "dynamic", tmp_path)
    assert "EMBEDDING_LOOKUP" in refused.text and refused.bug is None and not (tmp_path / "dynamic").exists()
    # int8 calibration feeds the program its own dtype (int64 ids), not the data's floats.
    assert attempt(_recipe(model, tokens, [], [("tflite", "int8")]), tmp_path / "int8", tmp_path).text == WORKS


def test_a_pytorch_gru_is_refused_as_tflite_int8_in_the_plan(tmp_path):
    model = save_model("torch", "gru", tmp_path / "model")
    recipe = _recipe(model, DATA, [], [("tflite", "int8")])
    with pytest.raises(EdgepressError, match=r"cannot convert its GRU \(aten.gru\)"):
        make_plan(edgepress.Recipe.from_dict(recipe), tmp_path / "plan")


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
def test_a_keras_recurrent_model_needs_a_fixed_tflite_batch_and_the_plan_says_so(framework, tmp_path):
    model = save_model(framework, "lstm", tmp_path / "model")
    recipe = _recipe(model, DATA, [], [("tflite", "fp32")])
    with pytest.raises(EdgepressError, match=r"needs `batch_size: 1`: 'lstm' \(LSTM\) loops over time"):
        make_plan(edgepress.Recipe.from_dict(recipe), tmp_path / "plan")
    recipe["exports"][0]["batch_size"] = 1
    make_plan(edgepress.Recipe.from_dict(recipe), tmp_path / "plan")


def test_keras3_token_ids_get_tflite_int16x8_from_litert_quantizer(tmp_path, tokens):
    # The converter's own int16x8 mode tries to calibrate the integer input and fails; LiteRT's quantizer takes it.
    model = save_model("keras3", "embedding", tmp_path / "model")
    assert attempt(_recipe(model, tokens, [], [("tflite", "int16x8")]), tmp_path / "run", tmp_path).text == WORKS
