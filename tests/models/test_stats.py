import numpy as np

from edgepress.models import zoo
from edgepress.models.stats import macs, model_stats


def _keras():
    from edgepress.compat import keras

    return keras()


def test_seed_cnn_macs_by_hand():
    stats = model_stats(zoo.seed_cnn())

    conv = 26 * 26 * 32 * 9 * 1 + 11 * 11 * 64 * 9 * 32 + 3 * 3 * 64 * 9 * 64  # out positions x filters x window
    dense = 576 * 64 + 64 * 10
    assert stats == {"params": 93_322, "macs": conv + dense, "sparsity": 0.0}


def test_depthwise_strided_and_dense_on_a_sequence():
    k = _keras()
    layers = k.layers
    inputs = layers.Input((16, 16, 4))
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(inputs)  # 8x8x8 out
    x = layers.Conv2D(6, 1, use_bias=False)(x)
    x = layers.Reshape((64, 6))(x)
    outputs = layers.Dense(5)(x)  # applied at each of the 64 positions
    model = k.Model(inputs, outputs)

    assert macs(model) == 8 * 8 * 4 * 2 * 9 + 8 * 8 * 6 * 8 + 64 * 6 * 5


def test_a_stripped_pruned_model_counts_each_layer_once_and_reports_its_sparsity():
    import tensorflow_model_optimization as tfmot

    model = zoo.seed_cnn()
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(model)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)  # reuses the layers: each now has two calls
    kernel, bias = stripped.layers[-2].get_weights()
    kernel[: kernel.shape[0] // 2] = 0
    stripped.layers[-2].set_weights([kernel, bias])

    stats = model_stats(stripped)

    assert stats["macs"] == macs(zoo.seed_cnn())
    kernels = sum(w.size for w in stripped.get_weights() if w.ndim > 1)
    assert np.isclose(stats["sparsity"], (288 * 64) / kernels)
