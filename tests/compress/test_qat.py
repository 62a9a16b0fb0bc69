import re

import numpy as np
import pytest

from edgepress.compat import keras
from edgepress.compress import prune, qat, sparsity
from edgepress.compress.qat import QatConfig, check_quantizable, is_quantize_aware
from edgepress.deploy import export_tflite
from edgepress.deploy.runner import open_model
from edgepress.errors import EdgepressError
from edgepress.models import training


def suggested_layers(message: str) -> list[str]:
    """The `layers: [...]` a refusal suggests."""
    return re.search(r"layers: \[([^\]]*)\]", message).group(1).split(", ")


def test_qat_makes_a_quantize_aware_model_that_keeps_accuracy(trained_cnn, digits):
    before = training.accuracy(training.predict(trained_cnn, digits.x_test), digits.y_test)

    aware = qat(trained_cnn, digits.x_train, digits.y_train, fine_tune_epochs=1)

    assert is_quantize_aware(aware) and not is_quantize_aware(trained_cnn)
    after = training.accuracy(training.predict(aware, digits.x_test), digits.y_test)
    assert after >= before - 0.03


def test_qat_refuses_a_layer_tfmot_cannot_quantize_and_names_it(prelu_cnn, digits):
    with pytest.raises(EdgepressError, match=r"tfmot cannot quantize layer 'prelu' \(PReLU\)\. .*layers: \[") as e:
        qat(prelu_cnn, digits.x_train, digits.y_train)
    layers = suggested_layers(str(e.value))
    # Every other layer, so that the remedy quantizes all that tfmot takes; and it does work.
    assert layers[0] == "conv" and layers[-1] == "logits" and "prelu" not in layers and len(layers) == 4
    aware = qat(prelu_cnn, digits.x_train[:64], digits.y_train[:64], fine_tune_epochs=1, layers=layers)
    assert "prelu" in [layer.name for layer in aware.layers]  # left as it was, unwrapped


def test_qat_names_every_layer_tfmot_refuses_at_once():
    k = keras()
    model = k.Sequential([k.layers.Input((8,)), k.layers.Dense(8, name="d1"), k.layers.PReLU(name="p1"),
                          k.layers.Dense(8, name="d2"), k.layers.PReLU(name="p2"), k.layers.Dense(2, name="out")])
    with pytest.raises(EdgepressError, match=r"'p1' \(PReLU\), 'p2' \(PReLU\).*layers: \[d1, d2, out\]"):
        check_quantizable(model, QatConfig())


def test_qat_names_a_layer_whose_activation_tfmot_cannot_quantize():
    k = keras()
    model = k.Sequential([k.layers.Input((8,)), k.layers.Dense(8, activation="elu", name="hidden"),
                          k.layers.Dense(2, name="out")])
    with pytest.raises(EdgepressError, match=r"activation 'elu' of layer 'hidden' \(Dense\).*relu"):
        check_quantizable(model, QatConfig())


def test_qat_refuses_a_model_that_is_already_quantization_aware():
    k = keras()
    model = k.Sequential([k.layers.Input((8,)), k.layers.Dense(4), k.layers.Dense(2)], name="twice")
    aware = qat(model, np.zeros((8, 8)), np.zeros(8))
    with pytest.raises(EdgepressError, match=r"'twice' is already quantization-aware.*once"):
        check_quantizable(aware, QatConfig())


def test_qat_on_named_layers_only(prelu_cnn, digits):
    aware = qat(prelu_cnn, digits.x_train, digits.y_train, fine_tune_epochs=1, layers=["conv", "logits"])
    wrapped = {layer.layer.name for layer in aware.layers if hasattr(layer, "layer")}
    # tfmot may also wrap weightless layers between annotated ones (Flatten); PReLU must stay as it is.
    assert {"conv", "logits"} <= wrapped and "prelu" not in wrapped


def test_qat_refuses_a_named_layer_the_model_does_not_have(prelu_cnn):
    with pytest.raises(EdgepressError, match=r"no layer named nope.*Its layers: conv, prelu"):
        check_quantizable(prelu_cnn, QatConfig(layers=["conv", "nope"]))


def residual_cnn(digits8):
    """Conv-BN-ReLU stem, a residual block of two Conv-BN (ReLU between) added back, ReLU6, Dense logits."""
    k = keras()
    layers = k.layers
    k.utils.set_random_seed(0)

    def conv_bn(x, name, relu=True):
        x = layers.Conv2D(16, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    inputs = layers.Input((8, 8, 1))
    stem = conv_bn(inputs, "stem")
    branch = conv_bn(conv_bn(stem, "b1"), "b2", relu=False)
    x = layers.ReLU(6.0, name="out_relu6")(layers.Add(name="add")([stem, branch]))
    x = layers.Flatten(name="flatten")(layers.MaxPooling2D(name="pool")(x))
    model = k.Model(inputs, layers.Dense(10, name="logits")(x), name="residual_cnn")
    training.fit(model, digits8.x_train, digits8.y_train, epochs=8, batch_size=32)
    return model


def test_conv_bn_residual_model_goes_through_prune_qat_and_int8_whole(tmp_path):
    """No `layers:` workaround: tfmot quantizes Conv+BN, the residual Add and ReLU6, and the int8 file keeps
    the accuracy the same fine-tuning gives a float model (within 2 pt here: 300 test samples, 1 epoch)."""
    from edgepress.models.datasets import load_dataset

    digits8 = load_dataset("digits", test_size=300).fit_to((8, 8, 1))
    x, y = digits8.x_train, digits8.y_train
    model = residual_cnn(digits8)
    pruned = prune(model, x, y, target_sparsity=0.5, fine_tune_epochs=1)

    aware = qat(pruned, x, y, fine_tune_epochs=1, after=["prune"])  # pruning-preserving QAT
    float_tuned = training.copy_model(pruned)  # the same fine-tuning (epochs, batch, learning rate), in float
    config = QatConfig()
    training.fit(float_tuned, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate)

    wrapped = {layer.layer.name for layer in aware.layers if hasattr(layer, "layer")}
    assert {"stem_conv", "stem_bn", "b2_bn", "add", "out_relu6", "logits"} <= wrapped
    artifact = export_tflite(aware, tmp_path / "residual_int8.tflite", "int8", calibration=x[:100])
    assert artifact.quantization["int8_macs"] == 1.0  # every convolution and the Dense run in int8

    float_accuracy = training.accuracy(training.predict(float_tuned, digits8.x_test), digits8.y_test)
    int8_accuracy = training.accuracy(open_model(artifact.path).predict(digits8.x_test), digits8.y_test)
    assert float_accuracy > 0.8  # it learned the task (0.98 before pruning)
    print(f"float fine-tuned {float_accuracy:.4f}, qat int8 {int8_accuracy:.4f}")
    assert int8_accuracy >= float_accuracy - 0.02
    assert sparsity(aware) == pytest.approx(0.5, abs=0.05)  # the zeros of prune survived qat


def test_preserving_qat_takes_conv_bn_too():
    k = keras()
    model = k.Sequential([k.layers.Input((8, 8, 1)), k.layers.Conv2D(4, 3, name="conv"),
                          k.layers.BatchNormalization(name="bn"), k.layers.ReLU(name="relu"), k.layers.Flatten(),
                          k.layers.Dense(10, name="logits")])
    for preserve in ("sparsity", "clusters"):
        aware = qat(model, np.zeros((8, 8, 8, 1)), np.zeros(8), preserve=preserve)
        assert is_quantize_aware(aware)
