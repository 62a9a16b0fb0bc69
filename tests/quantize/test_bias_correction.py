"""Bias correction as a remedy of accuracy-aware int8 (Nagel et al. 2019, empirical): each Conv / Dense bias minus the
mean output error of its weights quantized per output channel, as both exporters quantize them, on the calibration
data; tried after equalization and before any layer goes float, kept only when the int8 file is more accurate.

Real TensorFlow and LiteRT on a small MLP trained on scikit-learn's digits whose `hidden` layer is given one huge weight
per unit on pixel (0, 0), which is 0 in every digit: the float function is unchanged, but each unit's int8 scale is
set by that weight, so its other weights round coarsely, with a mean error the bias can take back.
"""

import numpy as np
import pytest

from edgepress.artifact import Artifact
from edgepress.compress.equalize import bias_correct_for_quantization
from edgepress.models import training
from edgepress.quantize import quantize_to_budget


@pytest.fixture(scope="module")
def digits8():
    from edgepress.models.datasets import load_dataset

    return load_dataset("digits", test_size=300).fit_to((8, 8, 1))


@pytest.fixture(scope="module")
def mlp(digits8):
    from edgepress.compat import keras

    k = keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Flatten(name="flatten"),
                          k.layers.Dense(32, activation="relu", name="hidden"), k.layers.Dense(10, name="logits")],
                         name="spiky")
    training.fit(model, digits8.x_train, digits8.y_train, epochs=8)
    assert np.all(digits8.x_train[:, 0, 0, 0] == 0) and np.all(digits8.x_test[:, 0, 0, 0] == 0)
    return model


def spiky(model, factor: float):
    """`model` with hidden's weight from pixel (0, 0) set to `factor` times each unit's largest weight."""
    result = training.copy_model(model)
    w, b = result.get_layer("hidden").get_weights()
    w[0, :] = factor * np.abs(w).max(axis=0)
    result.get_layer("hidden").set_weights([w, b])
    return result


def per_channel_int8(w: np.ndarray) -> np.ndarray:
    """A Dense kernel (in, out) through symmetric int8 per output channel: the test's own, independent version."""
    scale = np.abs(w).max(axis=0) / 127
    return np.clip(np.round(w / scale), -127, 127) * scale


def mean_error(model, corrected, layer: str, x: np.ndarray) -> np.ndarray:
    """Per output channel, the mean over `x` of the `corrected` model's layer run with int8 weights (per channel) minus
    the float `model`'s layer, both on the float model's inputs to the layer."""
    from edgepress.compat import keras

    k = keras()
    inputs = k.Model(model.inputs, model.get_layer(layer).input).predict(x, verbose=0)
    w, b = model.get_layer(layer).get_weights()
    wc, bc = corrected.get_layer(layer).get_weights()
    np.testing.assert_array_equal(w, wc)  # only the bias moves
    return (inputs @ per_channel_int8(wc) + bc - (inputs @ w + b)).mean(axis=0)


def test_bias_correction_removes_the_per_channel_mean_output_error_of_per_channel_int8_weights(mlp, digits8,
                                                                                              tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgepress.deploy import export_tflite

    model, x = spiky(mlp, 60), digits8.calibration(100)
    corrected, layers = bias_correct_for_quantization(model, x)
    assert layers == ["hidden", "logits"]
    before, after = mean_error(model, model, "hidden", x), mean_error(model, corrected, "hidden", x)
    assert np.abs(before).max() > 0.05  # the coarse weights shift hidden's outputs on average
    assert np.abs(after).max() < 1e-4 * np.abs(before).max() + 1e-6  # taken back exactly on the calibration data
    logits = mean_error(model, corrected, "logits", x)
    assert np.abs(logits).max() < 1e-5
    np.testing.assert_array_equal(model.get_layer("hidden").get_weights()[1], spiky(mlp, 60).get_layer(
        "hidden").get_weights()[1])  # the model given is left as it was
    # Per channel is what the exporter does: the TFLite int8 file's scales for hidden are max|w_c| / 127.
    artifact = export_tflite(model, tmp_path / "m.tflite", "int8", calibration=x)
    interpreter = Interpreter(model_path=str(artifact.path))
    found = [t for t in interpreter.get_tensor_details() if t["name"].endswith("hidden/MatMul")]
    scales = found[0]["quantization_parameters"]["scales"]
    np.testing.assert_allclose(scales, np.abs(model.get_layer("hidden").get_weights()[0]).max(axis=0) / 127,
                               rtol=1e-5)


def test_the_search_tries_bias_correction_before_float_layers_and_records_it(mlp, digits8, tmp_path):
    lines = []
    result = quantize_to_budget(spiky(mlp, 150), "tflite", tmp_path, digits8.calibration(100), digits8.x_test,
                                digits8.y_test, max_accuracy_drop="0.5%", equalize=False, max_float_layers=1,
                                on_trial=lines.append)
    full, corrected = result.trials[:2]
    assert full.remedy == "none" and not full.meets_budget
    assert corrected.remedy == "bias correction" and corrected.float_layers == []  # before any float layer
    record = result.to_dict()["bias_correction"]
    assert record["layers"] == ["hidden", "logits"] and record["artifact"] == corrected.artifact.name
    assert record["accuracy_before"] == full.accuracy and record["accuracy_after"] == corrected.accuracy
    assert record["applied"] == (corrected.accuracy > full.accuracy)
    assert lines[2].startswith("bias correction of 2 layer(s) (hidden, logits): full int8 accuracy ")
    assert ("kept" if record["applied"] else "not kept") in lines[2]
    assert any(n.startswith("Bias correction of hidden, logits") for n in result.notes)
    assert "bias_correction" in Artifact.load(corrected.artifact.path).steps
    # The float-layer search goes on from the corrected model when it was kept, else from the model as given.
    later = {t.remedy for t in result.trials[2:]}
    assert later == ({"bias correction"} if record["applied"] else {"none"})
    assert result.budget_met and result.chosen.float_layers == ["hidden"]


def test_a_layer_kept_in_float_keeps_its_own_bias(mlp, digits8):
    model, x = spiky(mlp, 150), digits8.calibration(100)
    corrected, layers = bias_correct_for_quantization(model, x, keep=["hidden"])
    assert layers == ["logits"]
    np.testing.assert_array_equal(corrected.get_layer("hidden").get_weights()[1],
                                  model.get_layer("hidden").get_weights()[1])
    assert not np.array_equal(corrected.get_layer("logits").get_weights()[1],
                              model.get_layer("logits").get_weights()[1])


def test_bias_correction_can_be_turned_off(mlp, digits8, tmp_path):
    result = quantize_to_budget(spiky(mlp, 150), "tflite", tmp_path, digits8.calibration(100), digits8.x_test,
                                digits8.y_test, max_accuracy_drop="0.5%", equalize=False, bias_correction=False,
                                max_float_layers=1)
    assert {t.remedy for t in result.trials} == {"none"} and result.to_dict()["bias_correction"] is None
