import pytest

from edgepress.compress import qat
from edgepress.compress.qat import is_quantize_aware
from edgepress.errors import EdgepressError
from edgepress.models import training


def test_qat_makes_a_quantize_aware_model_that_keeps_accuracy(trained_cnn, digits):
    before = training.accuracy(training.predict(trained_cnn, digits.x_test), digits.y_test)

    aware = qat(trained_cnn, digits.x_train, digits.y_train, fine_tune_epochs=1)

    assert is_quantize_aware(aware) and not is_quantize_aware(trained_cnn)
    after = training.accuracy(training.predict(aware, digits.x_test), digits.y_test)
    assert after >= before - 0.03


def test_qat_refuses_a_layer_tfmot_cannot_quantize_and_names_it(prelu_cnn, digits):
    with pytest.raises(EdgepressError, match=r"'prelu' \(PReLU\).*layers: \[conv, logits\]"):
        qat(prelu_cnn, digits.x_train, digits.y_train)


def test_qat_on_named_layers_only(prelu_cnn, digits):
    aware = qat(prelu_cnn, digits.x_train, digits.y_train, fine_tune_epochs=1, layers=["conv", "logits"])
    wrapped = {layer.layer.name for layer in aware.layers if hasattr(layer, "layer")}
    # tfmot may also wrap weightless layers between annotated ones (Flatten); PReLU must stay as it is.
    assert {"conv", "logits"} <= wrapped and "prelu" not in wrapped
