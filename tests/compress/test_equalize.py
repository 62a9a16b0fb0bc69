"""equalize on real tf_keras models trained briefly on scikit-learn's digits, exported with the real TFLite converter.

The central checks: the float model computes the same after equalization (and absorption); the weight
ranges of each pair meet; and a model that full int8 breaks (a few outlier units) quantizes within 1 pt of
float once equalized.
"""

import numpy as np
import pytest

from edgepress.compress.equalize import (
    EqualizeConfig,
    _in_ranges,
    _out_weights,
    check_equalizable,
    equalize,
    equalize_for_quantization,
    find_pairs,
)
from edgepress.errors import EdgepressError
from edgepress.models import training

OUTLIERS = (3, 17, 60)


def _keras():
    from edgepress.compat import keras

    return keras()


@pytest.fixture(scope="module")
def digits8():
    from edgepress.models.datasets import load_dataset

    return load_dataset("digits", test_size=300).fit_to((8, 8, 1))


@pytest.fixture(scope="module")
def mlp(digits8):
    k = _keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Flatten(name="flatten"),
                          k.layers.Dense(128, activation="relu", name="hidden"), k.layers.Dense(10, name="logits")],
                         name="mlp")
    training.fit(model, digits8.x_train, digits8.y_train, epochs=6, learning_rate=3e-3)
    return model


@pytest.fixture(scope="module")
def outlier_mlp(mlp, digits8):
    """`mlp` with 3 hidden units 1000x larger and the weights reading them 1000x smaller: the same function."""
    model = training.copy_model(mlp)
    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("logits").get_weights()
    for unit in OUTLIERS:
        w1[:, unit] *= 1000
        b1[unit] *= 1000
        w2[unit, :] /= 1000
    model.get_layer("hidden").set_weights([w1, b1])
    model.get_layer("logits").set_weights([w2, b2])
    _assert_same(mlp, model, digits8.x_test, tolerance=1e-4)
    return model


@pytest.fixture(scope="module")
def residual_cnn(digits8):
    """Conv-BN-ReLU stem, a residual block (3x3 'same' -> 1x1 -> BN, added to the stem), head, GAP, Dense."""
    k = _keras()
    layers = k.layers
    k.utils.set_random_seed(0)
    inputs = layers.Input((8, 8, 1))
    stem = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(
        layers.Conv2D(8, 3, padding="same", name="stem")(inputs)))
    x = layers.ReLU(name="a_relu")(layers.BatchNormalization(name="a_bn")(
        layers.Conv2D(8, 3, padding="same", name="a")(stem)))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="a2")(x)
    x = layers.BatchNormalization(name="b_bn")(layers.Conv2D(8, 1, name="b")(x))
    x = layers.ReLU(name="add_relu")(layers.Add(name="add")([stem, x]))
    x = layers.Conv2D(16, 3, activation="relu", name="head")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(16, activation="relu", name="hidden")(x)
    outputs = layers.Dense(10, name="logits")(x)
    model = k.Model(inputs, outputs, name="residual_cnn")
    training.fit(model, digits8.x_train, digits8.y_train, epochs=3, learning_rate=3e-3)
    return model


def _assert_same(reference, model, x, tolerance=1e-4):
    a, b = training.predict(reference, x), training.predict(model, x)
    assert np.abs(a - b).max() <= tolerance * np.abs(a).max()


def _range_ratio(model, pair) -> np.ndarray:
    r1 = np.abs(_out_weights(model, pair.first, pair.bn)).max(axis=1)
    r2 = _in_ranges(model, pair, len(r1))
    return r1 / r2


def test_mlp_float_unchanged_and_ranges_equal(outlier_mlp, digits8):
    pairs = find_pairs(outlier_mlp).pairs
    assert [(p.first, p.second) for p in pairs] == [("hidden", "logits")]
    before = _range_ratio(outlier_mlp, pairs[0])
    assert before.max() / before.min() > 1e5  # the outliers: ranges far apart

    calibration = digits8.calibration(200)
    equalized = equalize(outlier_mlp, calibration, None, EqualizeConfig())
    _assert_same(outlier_mlp, equalized, calibration)
    after = _range_ratio(equalized, pairs[0])
    assert np.allclose(after, 1, rtol=1e-4)
    # The input model is left as it was, and the architecture is the same.
    assert np.allclose(_range_ratio(outlier_mlp, pairs[0]), before)
    assert equalized.get_config() == outlier_mlp.get_config()


def test_cle_alone_is_exact_on_unseen_data(outlier_mlp, residual_cnn, digits8):
    for model in (outlier_mlp, residual_cnn):
        equalized = equalize(model, digits8.calibration(200), None, EqualizeConfig(bias_absorption=False))
        _assert_same(model, equalized, digits8.x_test)


def test_residual_cnn_pairs_bn_and_ties(residual_cnn, digits8):
    details = find_pairs(residual_cnn)
    found = {(p.first, p.second): p for p in details.pairs}
    assert set(found) == {("a", "a2"), ("a2", "b"), ("head", "hidden"), ("hidden", "logits")}
    assert found[("a", "a2")].bn == "a_bn"
    # The stem's output is also the skip of the residual Add, b's output meets the Add: no pair, but together
    # they are the residual stream, equalized as one (issue 27).
    assert "stem" not in details.left and "b" not in details.left
    (group,) = details.groups
    assert set(group.holders) == {"stem_bn", "b_bn"} and set(group.readers) == {"a", "head"}
    # a2 pads its input with zeros: a's high biases cannot be moved into it; b is 1x1: they can.
    assert found[("a", "a2")].shift_key is None and "pads" in found[("a", "a2")].no_absorb
    assert found[("a2", "b")].shift_key is not None

    calibration = digits8.calibration(300)
    equalized = equalize(residual_cnn, calibration, None, EqualizeConfig(samples=300))
    _assert_same(residual_cnn, equalized, calibration)
    for pair in details.pairs:
        ratio = _range_ratio(equalized, pair)
        assert np.abs(np.log(ratio[np.isfinite(ratio) & (ratio > 0)])).max() < 0.05, pair
    # BatchNormalization took the scale (gamma changed); the conv's kernel changed only by its input channels'
    # scale, as a reader of the residual stream (one factor per input channel, the same for every output).
    assert not np.allclose(equalized.get_layer("a_bn").get_weights()[0],
                           residual_cnn.get_layer("a_bn").get_weights()[0])
    ratio = equalized.get_layer("a").get_weights()[0] / residual_cnn.get_layer("a").get_weights()[0]
    assert np.allclose(ratio, ratio[:1, :1, :, :1], rtol=1e-4)
    assert equalized.get_config() == residual_cnn.get_config()  # the same architecture, new weights


def test_high_bias_absorption_moves_bias_and_stays_exact_on_calibration_data(residual_cnn, digits8):
    calibration = digits8.calibration(300)
    plain = equalize(residual_cnn, calibration, None, EqualizeConfig(bias_absorption=False, samples=300))
    absorbed, details = equalize_for_quantization(residual_cnn, calibration)
    assert details.absorbed  # something was moved
    for name in details.absorbed:
        pair = next(p for p in details.pairs if p.first == name)
        holder = pair.bn or name  # the bias before the activation: BatchNormalization's beta, or the layer's own
        new, old = absorbed.get_layer(holder).get_weights()[1], plain.get_layer(holder).get_weights()[1]
        assert (new <= old + 1e-6).all() and (new < old - 1e-6).any()
    _assert_same(residual_cnn, absorbed, calibration)


def test_bias_correction_moves_biases_toward_the_quantized_model(outlier_mlp, digits8):
    calibration = digits8.calibration(200)
    corrected = equalize(outlier_mlp, calibration, None, EqualizeConfig(bias_correction=True))
    plain = equalize(outlier_mlp, calibration, None, EqualizeConfig())
    changed = [layer.name for layer in corrected.layers if layer.weights and not np.allclose(
        layer.get_weights()[1], plain.get_layer(layer.name).get_weights()[1])]
    assert changed == ["hidden", "logits"]
    # Outputs move only by the small mean quantization error.
    a, b = training.predict(plain, calibration), training.predict(corrected, calibration)
    assert 0 < np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_outlier_mlp_int8_tflite_recovers_within_one_point(mlp, outlier_mlp, digits8, tmp_path):
    from edgepress.deploy import export_tflite
    from edgepress.deploy.runner import open_model

    def int8_accuracy(model, name):
        artifact = export_tflite(model, tmp_path / f"{name}.tflite", "int8", calibration=digits8.calibration(200))
        return training.accuracy(open_model(str(artifact.path)).predict(digits8.x_test), digits8.y_test)

    float_accuracy = training.accuracy(training.predict(outlier_mlp, digits8.x_test), digits8.y_test)
    assert float_accuracy > 0.9
    broken = int8_accuracy(outlier_mlp, "outlier")
    equalized, _ = equalize_for_quantization(outlier_mlp, digits8.calibration(200))
    fixed = int8_accuracy(equalized, "equalized")
    assert float_accuracy - broken > 0.1
    assert float_accuracy - fixed <= 0.01


def test_recipe_step_runs(outlier_mlp, tmp_path):
    import edgepress

    path = tmp_path / "outlier.keras"
    outlier_mlp.save(path)
    recipe = edgepress.Recipe.from_dict({
        "name": "eq", "model": {"path": str(path)},
        "data": {"dataset": "digits", "test_size": 200, "calibration_samples": 50, "check_samples": 20},
        "steps": [{"type": "equalize", "iterations": 5}],
        "exports": [{"format": "tflite", "precision": "int8"}],
        "measure": {"runs": 2, "warmup": 0},
    })
    report = edgepress.run(recipe, tmp_path / "run")
    row = report.artifacts[0]
    assert row["metrics"]["accuracy"] > 0.85 and "equalize" in row["steps"]


# -- bad input ---------------------------------------------------------------------------------------


def test_a_model_with_no_pair_is_refused_naming_why():
    k = _keras()
    squashed = k.Sequential([k.layers.Input((16,)), k.layers.Dense(8, name="d1"),
                             k.layers.Activation("sigmoid", name="squash"), k.layers.Dense(4, name="d2")],
                            name="squashed")
    with pytest.raises(EdgepressError, match=r"no pair.*'squashed'.*'d1'.*'squash' \(Activation\).*does not commute"):
        check_equalizable(squashed, EqualizeConfig())
    single = k.Sequential([k.layers.Input((16,)), k.layers.Dense(4, name="only")], name="single")
    with pytest.raises(EdgepressError, match="'only' its output is an output of the model"):
        check_equalizable(single)
    model, details = equalize_for_quantization(single, np.zeros((4, 16), np.float32))
    assert details.pairs == [] and model is not single


def test_config_refuses_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        EqualizeConfig(iterations=0)
    with pytest.raises(ValidationError):
        EqualizeConfig(relu6="yes")
