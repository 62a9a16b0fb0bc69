"""The one place that knows about Keras versions.

tensorflow-model-optimization 0.8 works with Keras 2 only, which TensorFlow >= 2.16 ships as the
separate `tf_keras` package and selects when TF_USE_LEGACY_KERAS=1 is set *before* TensorFlow is
imported. Importing this module sets it, so `edgepress/__init__.py` imports it first.
Everything in edgepress gets Keras from `keras()` here, never from `import keras`.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) is noise for a CLI user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras():
    """Return the Keras 2 module (tf_keras) that tfmot and edgepress's steps work with."""
    import tf_keras

    return tf_keras


def tensorflow():
    """Import TensorFlow with the Keras 2 switch already set, quieting its Python logger."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf
