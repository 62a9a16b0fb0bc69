"""The one place that knows about Keras versions.

tensorflow-model-optimization 0.8 works with Keras 2 only, which TensorFlow >= 2.16 ships as the
separate `tf_keras` package and selects when TF_USE_LEGACY_KERAS=1 is set *before* TensorFlow is
imported. Importing this module sets it, so `edgepress/__init__.py` imports it first.
Everything in edgepress gets Keras from here, never from `import keras`: `keras()` for tf_keras (what tfmot
needs), `keras_of(model)` for the Keras a given model was built with (Keras 3 models are handled natively).
"""

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) is noise for a CLI user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras():
    """Return the Keras 2 module (tf_keras) that tfmot and edgepress's steps work with."""
    with quiet():
        import tf_keras

    return tf_keras


def keras_of(model):
    """The Keras module `model` was built with: Keras 3 (`keras`) or Keras 2 (`tf_keras`). The steps that work on
    both (structured_prune, equalize, distill, training) build layers, optimizers and callbacks with it."""
    if type(model).__module__.split(".")[0] == "keras":
        with quiet():
            import keras as keras3

        return keras3
    return keras()


def tensorflow():
    """Import TensorFlow with the Keras 2 switch already set, quieting its Python logger."""
    with quiet():
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what TensorFlow, the converters and onnxruntime print to stderr from native code.

    Their chatter (CUDA probes, XNNPACK notes, calibration debug lines, Python warnings) is not for a
    CLI user; real failures still arrive as exceptions, which edgepress turns into clear errors.
    Set EDGEPRESS_VERBOSE=1 to see everything.
    """
    if os.environ.get("EDGEPRESS_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
