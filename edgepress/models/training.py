"""Training and evaluation shared by the zoo's train functions and the compression steps.

Models are classifiers that output logits or probabilities over classes; integer labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edgepress.compat import keras_of

# Called after each epoch with (epoch number from 1, epochs, logs such as {"loss": .., "accuracy": ..}, and the
# Keras model being trained when there is one: a run scores it to stop a hopeless tune trial early).
EpochCallback = Callable[..., None]


def outputs_logits(model) -> bool:
    """True unless the model ends in a softmax, so the loss is computed the right way."""
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") != "softmax"


def compile_classifier(model, learning_rate: float = 1e-3) -> None:
    keras = keras_of(model)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=outputs_logits(model)),
        metrics=["accuracy"],
    )


def fit(
    model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    callbacks: Sequence = (),
    on_epoch: EpochCallback | None = None,
    seed: int = 0,
) -> None:
    """Compile `model` as a classifier and train it for `epochs` on (x, y), with the Keras it was built with."""
    keras = keras_of(model)
    keras.utils.set_random_seed(seed)
    compile_classifier(model, learning_rate)
    cbs = list(callbacks)
    if on_epoch is not None:
        cbs.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e + 1, epochs, logs, model)))
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=cbs, shuffle=True)


def copy_model(model):
    """An independent copy of `model` with the same weights, so a step never changes its input."""
    copy = keras_of(model).models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Model outputs for `x` as float32, without Keras's progress bar."""
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of `outputs` (N, classes) against integer labels."""
    return float(np.mean(np.argmax(outputs, axis=-1) == y))
