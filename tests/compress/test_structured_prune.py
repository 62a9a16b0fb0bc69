"""structured_prune on real tf_keras models trained briefly on scikit-learn's digits.

The central check is exactness: the smaller model must compute what the original computes with the
removed channels' parameters zeroed by hand (filter, bias, BatchNormalization gamma and beta,
DepthwiseConv2D slice). Anything sliced wrongly (a Concatenate offset, a Flatten order, an Add
group pruned apart) breaks it.
"""

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

import edgepress
from edgepress.compress import StructuredPruneConfig, structured_prune
from edgepress.compress.structured_prune import plan
from edgepress.errors import EdgepressError
from edgepress.models import training
from edgepress.models.stats import macs, sparsity


def _keras():
    from edgepress.compat import keras

    return keras()


@pytest.fixture(scope="module")
def residual_cnn(digits):
    """A functional CNN with a residual Add, BatchNormalizations, a DepthwiseConv2D and a Concatenate."""
    k = _keras()
    layers = k.layers
    k.utils.set_random_seed(0)
    inputs = layers.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    branch = layers.Conv2D(8, 3, padding="same", activation="relu", name="branch")(x)
    branch = layers.DepthwiseConv2D(3, padding="same", name="dw")(branch)
    branch = layers.Conv2D(8, 1, name="proj")(branch)
    branch = layers.BatchNormalization(name="proj_bn")(branch)
    x = layers.ReLU(name="add_relu")(layers.Add(name="add")([x, branch]))
    side = layers.Conv2D(6, 3, padding="same", activation="relu", name="side")(x)
    x = layers.Concatenate(name="cat")([x, side])
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Conv2D(16, 3, activation="relu", name="head")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(16, activation="relu", name="hidden")(x)
    outputs = layers.Dense(10, name="logits")(x)
    model = k.Model(inputs, outputs, name="residual_cnn")
    training.fit(model, digits.x_train, digits.y_train, epochs=3, learning_rate=3e-3)
    return model


def _names(model, kind: str) -> list[str]:
    return [layer.name for layer in model.layers if type(layer).__name__ == kind]


def _masked(model, removed: dict[str, list[int]], channelwise: dict[str, str]):
    """A copy of `model` with the removed channels zeroed by hand; `channelwise` maps BN / depthwise -> producer."""
    masked = training.copy_model(model)
    for name, gone in removed.items():
        kernel, bias = masked.get_layer(name).get_weights()
        kernel[..., gone], bias[gone] = 0, 0
        masked.get_layer(name).set_weights([kernel, bias])
    for name, producer in channelwise.items():
        gone = removed.get(producer, [])
        weights = masked.get_layer(name).get_weights()
        if type(masked.get_layer(name)).__name__ == "BatchNormalization":
            weights[0][gone], weights[1][gone] = 0, 0  # gamma, beta
        else:  # DepthwiseConv2D kernel (h, w, channels, 1) and bias
            weights[0][:, :, gone, :], weights[1][gone] = 0, 0
        masked.get_layer(name).set_weights(weights)
    return masked


def test_seed_cnn_becomes_a_smaller_dense_model_and_keeps_its_accuracy(trained_cnn, digits):
    before = training.accuracy(training.predict(trained_cnn, digits.x_test), digits.y_test)
    params_before, macs_before = trained_cnn.count_params(), macs(trained_cnn)

    smaller = structured_prune(trained_cnn, digits.x_train, digits.y_train, ratio=0.5, fine_tune_epochs=2)

    convs = [smaller.get_layer(n) for n in _names(smaller, "Conv2D")]
    dense = [smaller.get_layer(n) for n in _names(smaller, "Dense")]
    assert [c.filters for c in convs] == [16, 32, 32]
    assert [d.units for d in dense] == [32, 10]  # the classifier keeps its 10 classes
    assert smaller.count_params() < 0.3 * params_before
    assert macs(smaller) < 0.3 * macs_before
    assert sparsity(smaller) < 0.01  # fewer channels, not zeroed ones
    after = training.accuracy(training.predict(smaller, digits.x_test), digits.y_test)
    assert after >= before - 0.05
    assert trained_cnn.count_params() == params_before  # the input model is left alone


def test_removal_is_exact_on_the_seed_cnn(trained_cnn, digits):
    chosen = plan(trained_cnn, ratio=0.5)
    smaller = structured_prune(trained_cnn, digits.x_train, digits.y_train, ratio=0.5, fine_tune_epochs=0)

    x = digits.x_test[:64]
    expected = training.predict(_masked(trained_cnn, chosen.removed, {}), x)
    np.testing.assert_allclose(training.predict(smaller, x), expected, atol=1e-4)
    # The removed channels mattered: the untouched original computes something else.
    assert np.abs(training.predict(trained_cnn, x) - expected).max() > 1e-2


def test_residual_add_concatenate_batchnorm_and_depthwise_are_followed_exactly(residual_cnn, digits):
    chosen = plan(residual_cnn, ratio=0.5, criterion="l2")
    smaller = structured_prune(residual_cnn, digits.x_train, digits.y_train, ratio=0.5, criterion="l2",
                               fine_tune_epochs=0)

    # Channels joined by Add go together: the stem and the projection lose the same ones.
    assert chosen.removed["stem"] == chosen.removed["proj"] and len(chosen.removed["stem"]) == 4
    widths = {n: smaller.get_layer(n).filters for n in ("stem", "branch", "proj", "side", "head")}
    assert widths == {"stem": 4, "branch": 4, "proj": 4, "side": 3, "head": 8}
    # Concatenate maps input ranges to output ranges: head reads 4 kept stem/add channels, then 3 of side's.
    assert smaller.get_layer("head").kernel.shape[-2] == 7
    assert smaller.get_layer("hidden").units == 8 and smaller.get_layer("logits").units == 10

    x = digits.x_test[:64]
    masked = _masked(residual_cnn, chosen.removed, {"stem_bn": "stem", "proj_bn": "proj", "dw": "branch"})
    np.testing.assert_allclose(training.predict(smaller, x), training.predict(masked, x), atol=1e-4)
    assert macs(smaller) < 0.5 * macs(residual_cnn)


def test_gradual_schedule_zeroes_then_removes(residual_cnn, digits):
    before = training.accuracy(training.predict(residual_cnn, digits.x_test), digits.y_test)

    smaller = structured_prune(residual_cnn, digits.x_train, digits.y_train, ratio=0.5, schedule="gradual",
                               rounds=2, fine_tune_epochs=2)

    assert smaller.get_layer("stem").filters == 4 and smaller.get_layer("head").filters == 8
    assert sparsity(smaller) < 0.01
    after = training.accuracy(training.predict(smaller, digits.x_test), digits.y_test)
    assert after >= before - 0.10


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_the_filters_with_the_smallest_norm_go(criterion):
    k = _keras()
    k.utils.set_random_seed(0)
    model = k.Sequential([k.layers.Input((8,)), k.layers.Dense(6, name="hidden"), k.layers.Dense(3, name="out")])
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:, [1, 4]] *= 1e-3  # the two weakest units
    model.get_layer("hidden").set_weights([kernel, bias])

    assert plan(model, ratio=0.34, criterion=criterion).removed == {"hidden": [1, 4]}


def test_per_layer_ratios(trained_cnn):
    conv, conv_1, conv_2 = _names(trained_cnn, "Conv2D")

    chosen = plan(trained_cnn, ratio=0, layers={conv_1: 0.75})

    assert chosen.widths[conv_1] == (64, 16)
    assert all(after == before for name, (before, after) in chosen.widths.items() if name != conv_1)


def test_pruned_models_export_to_tflite_and_run(residual_cnn, digits, tmp_path):
    from edgepress.deploy import export_tflite
    from edgepress.deploy.runner import open_model

    smaller = structured_prune(residual_cnn, digits.x_train, digits.y_train, ratio=0.5, fine_tune_epochs=1)
    keras_accuracy = training.accuracy(training.predict(smaller, digits.x_test), digits.y_test)

    for precision in ("fp32", "int8"):
        artifact = export_tflite(smaller, tmp_path / f"small_{precision}.tflite", precision,
                                 calibration=digits.x_train[:100], check_data=digits.x_test[:100])
        assert artifact.check["top1_agreement"] >= (1.0 if precision == "fp32" else 0.9)
        outputs = open_model(str(artifact.path)).predict(digits.x_test)
        assert training.accuracy(outputs, digits.y_test) >= keras_accuracy - 0.05


@pytest.mark.parametrize("channels, removed, multiple, expected", [
    (100, 33, 8, 28),  # keeps 67 -> 72
    (48, 14, 8, 8),  # keeps 34 -> 40
    (16, 15, 8, 8),  # keeps 1 -> never below 8
    (6, 4, 8, 0),  # fewer channels than 8: all kept
    (16, 0, 8, 0),  # nothing asked, nothing removed
    (64, 32, None, 32),  # no rounding
])
def test_round_to_rounds_the_kept_count_up_to_a_multiple(channels, removed, multiple, expected):
    from edgepress.compress.structured_prune import _rounded

    assert _rounded(channels, removed, multiple) == expected


def test_round_to_keeps_multiples_and_the_model_still_runs_and_exports(residual_cnn, digits, tmp_path):
    from edgepress.deploy import export_onnx, export_tflite

    unrounded = plan(residual_cnn, ratio=0.6)
    rounded = plan(residual_cnn, ratio=0.6, round_to=4)
    assert any(after % 4 for _, after in unrounded.widths.values())  # without it: odd counts (3, 2, 6)
    for name, (before, after) in rounded.widths.items():
        if name in rounded.removed:
            assert after % 4 == 0 and 4 <= after < before, name
        assert after >= unrounded.widths[name][1]  # rounded up, never down
    assert rounded.widths["head"] == (16, 8) and rounded.widths["side"] == (6, 4)

    smaller = structured_prune(residual_cnn, digits.x_train, digits.y_train, ratio=0.6, round_to=4,
                               fine_tune_epochs=1)
    widths = {layer.name: layer.get_weights()[0].shape[-1] for layer in smaller.layers
              if type(layer).__name__ in ("Conv2D", "Dense")}
    assert widths == {name: after for name, (_, after) in rounded.widths.items()}
    tflite = export_tflite(smaller, tmp_path / "small.tflite", "fp32", check_data=digits.x_test[:50])
    onnx = export_onnx(smaller, tmp_path / "small.onnx", "fp32", check_data=digits.x_test[:50])
    assert tflite.check["top1_agreement"] == 1.0 and onnx.check["top1_agreement"] == 1.0


def test_mobilenet_v2_from_the_zoo_prunes_with_rounding_and_exports(tmp_path):
    from edgepress.deploy import export_tflite
    from edgepress.models import zoo
    from edgepress.models.datasets import load_dataset

    data = load_dataset("digits", train_size=64, test_size=32).fit_to(zoo.ZOO["mobilenet_v2"].input_shape)
    assert data.x_train.shape[1:] == (32, 32, 3)  # gray 8x8 digits, resized and repeated to RGB
    model = zoo.build("mobilenet_v2")
    assert _names(model, "DepthwiseConv2D") and _names(model, "Add") and _names(model, "BatchNormalization")

    smaller = structured_prune(model, data.x_train, data.y_train, ratio=0.3, round_to=8, fine_tune_epochs=0)
    assert smaller.count_params() < 0.7 * model.count_params()

    def width(m, name):
        return m.get_layer(name).get_weights()[0].shape[-1]

    convs = _names(model, "Conv2D")
    changed = [n for n in convs if width(smaller, n) != width(model, n)]
    assert len(changed) > 10  # expand convs, and the project convs tied by the residual Adds
    assert all(width(smaller, n) % 8 == 0 for n in changed)
    # The project convs of one stage are tied by their Adds: they keep the same number of channels.
    assert width(smaller, "block_14_project") == width(smaller, "block_15_project") < width(model, "block_14_project")
    dw = smaller.get_layer("block_14_depthwise").get_weights()[0].shape[-2]
    assert dw == width(smaller, "block_14_expand")  # the depthwise conv follows its expand conv
    artifact = export_tflite(smaller, tmp_path / "mnv2.tflite", "fp32", check_data=data.x_test[:16])
    assert artifact.check["top1_agreement"] == 1.0


def _reshape_cnn():
    """conv 'a' feeds a Reshape (which pruning cannot follow); conv 'b' and dense 'hidden' can be pruned."""
    k = _keras()
    layers = k.layers
    inputs = layers.Input((28, 28, 1))
    x = layers.Conv2D(4, 3, activation="relu", name="a")(inputs)
    x = layers.Reshape((26, 26 * 4, 1), name="reshape")(x)
    x = layers.Conv2D(8, 3, strides=4, activation="relu", name="b")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(16, activation="relu", name="hidden")(x)
    return k.Model(inputs, layers.Dense(10, name="logits")(x), name="reshape_cnn")


def test_a_layer_it_cannot_follow_is_left_whole_and_named():
    model = _reshape_cnn()

    chosen = plan(model, ratio=0.5)

    assert "a" in chosen.left_whole and "'reshape' (Reshape)" in chosen.left_whole["a"]
    assert chosen.widths["a"] == (4, 4) and chosen.widths["b"] == (8, 4) and chosen.widths["hidden"] == (16, 8)
    assert any(line.startswith("a left whole") and "reshape" in line for line in chosen.notes())
    assert "logits" not in chosen.left_whole  # the classifier is never pruned, and that is no news


# -- bad input: a clear EdgepressError naming the layer, before any work -----------------------------

def test_a_ratio_that_leaves_zero_channels_is_refused(trained_cnn, digits):
    conv = _names(trained_cnn, "Conv2D")[0]
    with pytest.raises(EdgepressError, match=rf"all 32 channels of layer '{conv}'.*zero channels.*at most 0\.96"):
        structured_prune(trained_cnn, digits.x_train, digits.y_train, ratio=0, layers={conv: 1.0})


def test_a_structure_it_cannot_follow_is_refused_naming_the_layer(prelu_cnn, digits):
    # conv -> PReLU: the only prunable layer feeds a PReLU, so nothing can be pruned.
    with pytest.raises(EdgepressError, match=r"cannot follow the channels of any layer.*'conv'.*'prelu' \(PReLU\)"):
        structured_prune(prelu_cnn, digits.x_train, digits.y_train, ratio=0.5)


def test_asking_for_a_layer_it_cannot_prune_names_it_and_why():
    model = _reshape_cnn()
    with pytest.raises(EdgepressError, match=r"cannot prune layer 'a': it feeds 'reshape' \(Reshape\).*b, hidden"):
        plan(model, layers={"a": 0.5})
    with pytest.raises(EdgepressError, match=r"cannot prune layer 'logits': its units are the model's outputs"):
        plan(model, layers={"logits": 0.5})
    with pytest.raises(EdgepressError, match=r"no layer named nope"):
        plan(model, layers={"nope": 0.5})


def test_tied_layers_given_different_ratios_are_refused(residual_cnn):
    with pytest.raises(EdgepressError, match=r"proj, stem share their channels.*one ratio"):
        plan(residual_cnn, layers={"stem": 0.5, "proj": 0.25})


def test_a_subclassed_model_is_refused():
    k = _keras()

    class Tiny(k.Model):
        def __init__(self):
            super().__init__(name="tiny")
            self.dense = k.layers.Dense(4)

        def call(self, x):
            return self.dense(x)

    model = Tiny()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(EdgepressError, match=r"'tiny': it is a subclassed Keras model"):
        plan(model)


def test_config_refuses_bad_values():
    with pytest.raises(ValidationError):
        StructuredPruneConfig(ratio=1.5)
    with pytest.raises(ValidationError, match="at least rounds"):
        StructuredPruneConfig(schedule="gradual", rounds=3, fine_tune_epochs=2)
    with pytest.raises(ValidationError):
        StructuredPruneConfig(criterion="l3")
    with pytest.raises(ValidationError, match="round_to"):
        StructuredPruneConfig(round_to=0)


# -- in a recipe ------------------------------------------------------------------------------------

def test_a_recipe_runs_the_step_logs_the_layers_left_whole_and_reports_macs(tmp_path, digits):
    from edgepress.api import Progress

    model_file = tmp_path / "reshape_cnn.keras"
    _reshape_cnn().save(model_file)
    recipe = edgepress.Recipe.from_dict({
        "name": "sp",
        "model": {"path": str(model_file)},
        "data": {"dataset": "digits", "train_size": 400, "test_size": 100, "calibration_samples": 20},
        "steps": [{"type": "structured_prune", "ratio": 0.5, "fine_tune_epochs": 1}],
        "exports": [{"format": "tflite", "precision": "fp32"}],
        "measure": {"runs": 3, "warmup": 1},
    })
    lines = []

    class Log(Progress):
        def done(self, message):
            lines.append(message)

    report = edgepress.run(recipe, tmp_path / "run", Log())

    assert any("structured_prune: a left whole: it feeds 'reshape' (Reshape)" in line for line in lines)
    source, pruned = report.results["models"]
    assert pruned["stage"] == "structured_prune"
    assert pruned["params"] < source["params"] and 0 < pruned["macs"] < source["macs"]
    assert f"{pruned['macs']:,} MACs" in (report.run_dir / "report.md").read_text()


def test_the_cli_refuses_zero_channels_with_exit_code_2_and_writes_nothing(tmp_path):
    from edgepress.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "zero",
        "model": {"zoo": "seed_cnn", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 200, "test_size": 50},
        "steps": [{"type": "structured_prune", "ratio": 1.0}],
        "exports": [{"format": "tflite", "precision": "fp32"}],
    }))
    out = tmp_path / "run"

    result = CliRunner().invoke(app, ["run", str(recipe), "-o", str(out)])

    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "zero channels" in message and "Traceback" not in message
    assert not out.exists()


def test_an_unknown_key_in_the_step_names_the_valid_ones():
    with pytest.raises(EdgepressError, match=r"unknown key 'steps\.0\.structured_prune\.ratios'.*ratio, layers"):
        edgepress.Recipe.from_dict({"model": {"zoo": "seed_cnn"},
                                    "steps": [{"type": "structured_prune", "ratios": 0.5}]})


def test_structured_prune_after_qat_is_refused():
    with pytest.raises(EdgepressError, match=r"structured_prune must come before qat"):
        edgepress.Recipe.from_dict({"model": {"zoo": "seed_cnn"},
                                    "steps": [{"type": "qat"}, {"type": "structured_prune"}]})
