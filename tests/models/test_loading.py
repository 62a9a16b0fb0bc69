"""load_model on real models saved by tf_keras (Keras 2) and Keras 3, the bridge from Keras 3 to tf_keras, and bad
inputs.

Every model is tiny; each is built and saved once per module. The weights are randomized before
saving (BatchNormalization's moving statistics included) so that a weight that is not copied, or
copied into the wrong place, changes the outputs.
"""

import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgepress.compat import keras as tf_keras_module
from edgepress.errors import EdgepressError
from edgepress.models.bridge import RebuildError, to_tf_keras
from edgepress.models.keras_files import is_plain_saved_model
from edgepress.models.loading import load_model, open_model

tf_keras = tf_keras_module()
import keras as keras3  # noqa: E402  (Keras 3; after compat, which sets TF_USE_LEGACY_KERAS)
import tensorflow as tf  # noqa: E402

IMAGE = np.random.default_rng(1).random((3, 8, 8, 3)).astype("float32")


def _randomize(model) -> None:
    """Give every weight a seeded random value; variances stay positive."""
    rng = np.random.default_rng(0)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "variance" in weight.name or "variance" in getattr(weight, "path", ""):
            weight.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        else:
            weight.assign(rng.uniform(-0.3, 0.3, shape).astype("float32"))


def _sequential_cnn(k):
    layers = k.layers
    return k.Sequential(
        [
            k.Input((8, 8, 3)),
            layers.Conv2D(4, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(8, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(3),
        ],
        name="cnn",
    )


def _functional_resnet(k):
    """A residual Add and a Concatenate, plus the other layers of standard CNNs."""
    layers = k.layers
    inputs = k.Input((8, 8, 3), name="image")
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = layers.Conv2D(4, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    shortcut = x
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Activation("relu")(x)
    x = layers.Add()([x, shortcut])
    branch = layers.SeparableConv2D(4, 3, padding="same")(x)
    pooled = layers.AveragePooling2D(pool_size=1)(x)
    x = layers.Concatenate()([branch, pooled])
    x = layers.MaxPooling2D()(x)
    head = layers.GlobalAveragePooling2D()(x)
    flat = layers.Reshape((4, 32))(x)
    flat = layers.Flatten()(flat)
    x = layers.Concatenate()([head, flat])
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(3, name="logits")(x)
    return k.Model(inputs, outputs, name="resnet")


def _save(model, path):
    model.save(path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{(writer, model kind, format): (path, expected outputs on IMAGE)} for tiny real models."""
    root = tmp_path_factory.mktemp("models")
    files = {}
    for writer, k in (("keras2", tf_keras), ("keras3", keras3)):
        for kind, build in (("sequential", _sequential_cnn), ("functional", _functional_resnet)):
            model = build(k)
            _randomize(model)
            expected = np.asarray(model(IMAGE, training=False))
            formats = ["keras", "h5"] + (["savedmodel"] if writer == "keras2" else [])
            for fmt in formats:
                name = f"{writer}_{kind}" + ("" if fmt == "savedmodel" else f".{fmt}")
                files[(writer, kind, fmt)] = (_save(model, str(root / name)), expected)
    return files


CASES = [
    ("keras2", "sequential", "keras"),
    ("keras2", "sequential", "h5"),
    ("keras2", "sequential", "savedmodel"),
    ("keras2", "functional", "keras"),
    ("keras2", "functional", "h5"),
    ("keras3", "sequential", "keras"),
    ("keras3", "sequential", "h5"),
    ("keras3", "functional", "keras"),
    ("keras3", "functional", "h5"),
]


@pytest.mark.parametrize("case", CASES, ids=["-".join(case) for case in CASES])
def test_loads_the_model_in_the_keras_that_wrote_it_with_the_same_outputs(saved, case):
    path, expected = saved[case]
    model = load_model(path)
    assert isinstance(model, keras3.Model if case[0] == "keras3" else tf_keras.Model)
    assert not isinstance(model, tf_keras.Model if case[0] == "keras3" else keras3.Model)
    np.testing.assert_allclose(np.asarray(model(IMAGE, training=False)), expected, atol=1e-5, rtol=1e-5)
    assert open_model(path).kind == ("keras3" if case[0] == "keras3" else "tf_keras")


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "keras3"], ids=lambda c: "-".join(c))
def test_the_bridge_rebuilds_a_keras3_model_in_tf_keras_with_the_same_outputs(saved, case):
    path, expected = saved[case]
    rebuilt = to_tf_keras(load_model(path))
    assert isinstance(rebuilt, tf_keras.Model)
    np.testing.assert_allclose(rebuilt(IMAGE, training=False).numpy(), expected, atol=1e-5, rtol=1e-5)


def test_keras3_rebuild_keeps_layer_names_and_frozen_layers(tmp_path):
    model = _sequential_cnn(keras3)
    model.layers[2].trainable = False  # a frozen BatchNormalization, as in fine-tuning
    path = _save(model, str(tmp_path / "frozen.keras"))
    loaded = to_tf_keras(load_model(path))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert loaded.layers[2].trainable is False


def test_keras3_nested_model_is_rebuilt(tmp_path):
    backbone = keras3.Sequential([keras3.Input((8, 8, 3)), keras3.layers.Conv2D(2, 3)], name="backbone")
    inputs = keras3.Input((8, 8, 3))
    outputs = keras3.layers.Dense(2)(keras3.layers.Flatten()(backbone(inputs)))
    model = keras3.Model(inputs, outputs)
    _randomize(model)
    loaded = to_tf_keras(load_model(_save(model, str(tmp_path / "nested.keras"))))
    np.testing.assert_allclose(loaded(IMAGE).numpy(), np.asarray(model(IMAGE)), atol=1e-5)


def test_loading_module_does_not_import_tensorflow():
    # The CLI imports it and must start instantly.
    code = "import sys, edgepress.models.loading; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- bad inputs ----------------------------------------------------------------------------------


def _error(path) -> str:
    with pytest.raises(EdgepressError) as raised:
        load_model(path)
    message = str(raised.value)
    assert str(path) in message
    return message


def test_missing_path(tmp_path):
    message = _error(tmp_path / "missing.keras")
    assert "does not exist" in message and ".keras" in message


def test_unknown_extension(tmp_path):
    path = tmp_path / "model.pb"
    path.write_bytes(b"not a keras model")
    message = _error(path)
    assert "'.pb'" in message and ".keras, .h5" in message


def test_an_onnx_file_is_not_a_keras_model(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not an onnx model either")
    assert "as an ONNX model" in _error(path)


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    assert "corrupt" in _error(path)


def test_truncated_keras_archive(saved, tmp_path):
    source, _ = saved[("keras3", "sequential", "keras")]
    data = open(source, "rb").read()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(path)


def test_archive_without_metadata(tmp_path):
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    assert 'model.save("model.keras")' in _error(path)


def test_weights_only_h5(tmp_path):
    model = _sequential_cnn(tf_keras)
    path = tmp_path / "only.weights.h5"
    model.save_weights(path)
    assert "weights only" in _error(path)


def test_plain_saved_model_from_tf_saved_model_save(tmp_path):
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.__call__ = tf.function(lambda x: x * module.scale, input_signature=[tf.TensorSpec([None], tf.float32)])
    path = tmp_path / "plain_savedmodel"
    tf.saved_model.save(module, str(path))
    assert is_plain_saved_model(path)
    message = _error(path)
    assert "no Keras model" in message and 'model.save("model.keras")' in message


def test_plain_saved_model_from_keras3_export(tmp_path):
    path = tmp_path / "exported"
    _sequential_cnn(keras3).export(str(path), verbose=False)
    assert "no Keras model" in _error(path)


def test_directory_that_is_not_a_saved_model(tmp_path):
    assert "not a SavedModel" in _error(tmp_path)


def test_a_keras3_layer_without_tf_keras_equivalent_loads_but_does_not_bridge(tmp_path):
    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.RMSNormalization(name="rms")])
    loaded = load_model(_save(model, str(tmp_path / "rms.keras")))  # Keras 3 natively: no rebuild
    assert [layer.name for layer in loaded.layers] == ["rms"]
    with pytest.raises(RebuildError, match="'rms' .RMSNormalization."):
        to_tf_keras(loaded)


def test_keras3_activation_that_differs_in_keras2_fails_the_bridges_output_check(tmp_path):
    # Keras 3's hard_sigmoid is relu6(x + 3) / 6, Keras 2's is clip(0.2 x + 0.5): the rebuild
    # succeeds but its outputs differ, and the check after the rebuild must catch that.
    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Activation("hard_sigmoid")])
    loaded = load_model(_save(model, str(tmp_path / "hard_sigmoid.keras")))
    with pytest.raises(RebuildError, match="does not reproduce its outputs"):
        to_tf_keras(loaded)


@keras3.saving.register_keras_serializable(package="edgepress_test")
class Keras3Custom(keras3.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


class Keras2Custom(tf_keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_custom_layer(tmp_path, suffix):
    model = keras3.Sequential([keras3.Input((4,)), Keras3Custom(name="doubler")])
    message = _error(_save(model, str(tmp_path / f"custom3{suffix}")))
    assert "Keras3Custom" in message and "plain Keras model" in message


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras2_custom_layer(tmp_path, suffix):
    model = tf_keras.Sequential([tf_keras.Input((4,)), Keras2Custom(name="doubler")])
    message = _error(_save(model, str(tmp_path / f"custom2{suffix}")))
    assert "Keras2Custom" in message and "plain Keras model" in message
