"""Weight clustering with tfmot: each kernel keeps only a few distinct values, fine-tuned, wrappers stripped.

    clustered = cluster(model, x_train, y_train, number_of_clusters=16)

Every clustered kernel ends with at most `number_of_clusters` distinct values (the centroids, learned
while fine-tuning), so the file compresses far better after gzip, like pruning does; the latency does
not change. `preserve_sparsity: true` keeps the zeros of a pruned model (sparsity-preserving
clustering). A `qat` step right after keeps the clusters (cluster-preserving QAT, see qat.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from edgepress.compress.step import Step, register
from edgepress.errors import EdgepressError
from edgepress.models import training
from edgepress.specs.section import Section
from edgepress.values import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE

# Recipe names of tfmot's CentroidInitialization members.
CENTROID_INITIALIZATIONS = {
    "kmeans_plus_plus": "KMEANS_PLUS_PLUS",
    "density_based": "DENSITY_BASED",
    "linear": "LINEAR",
    "random": "RANDOM",
}


class ClusterConfig(Section):
    """Cluster the kernels of Conv and Dense layers to a few shared values, then fine-tune the centroids."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["cluster"] = "cluster"
    number_of_clusters: int = Field(16, ge=2, description="Distinct values each clustered kernel keeps.")
    centroid_initialization: Literal["kmeans_plus_plus", "density_based", "linear", "random"] = Field(
        "kmeans_plus_plus",
        description="Where the centroids start: k-means++ on the weights, evenly over the weights' distribution "
        "(density_based), evenly between their min and max (linear), or at random between them.",
    )
    preserve_sparsity: bool = Field(
        False, description="Keep the zeros of a pruned model as zeros (sparsity-preserving clustering)."
    )
    fine_tune_epochs: int = Field(2, le=MAX_EPOCHS, ge=1, description="Epochs of training the centroids.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(1e-4, gt=0, le=MAX_LEARNING_RATE)
    layers: list[str] | None = Field(
        None, description="Names of the layers to cluster; default: every layer with kernels tfmot can cluster."
    )

    @model_validator(mode="after")
    def _room_for_zero(self) -> ClusterConfig:
        if self.preserve_sparsity and self.number_of_clusters < 3:
            raise ValueError("preserve_sparsity keeps one cluster for zero: number_of_clusters must be at least 3")
        return self


def cluster(model, x: np.ndarray, y: np.ndarray, config: ClusterConfig | None = None, on_epoch=None, **options):
    """Cluster the kernels of `model` while fine-tuning on (x, y); return the stripped Keras model.

    `options` are ClusterConfig fields, for calls without a config object: cluster(m, x, y, number_of_clusters=8).
    The input model is left as it was.
    """
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster as experimental

    from edgepress.compat import keras

    config = config or ClusterConfig(**options)
    selected = layers_to_cluster(model, config)
    initializations = tfmot.clustering.keras.CentroidInitialization
    init = getattr(initializations, CENTROID_INITIALIZATIONS[config.centroid_initialization])

    def wrap(layer):
        if layer.name in selected:
            # The experimental entry point is the one that takes preserve_sparsity (tfmot's own tutorial uses it).
            return experimental.cluster_weights(
                layer, config.number_of_clusters, init, preserve_sparsity=config.preserve_sparsity
            )
        return layer

    # Wrapping reuses the layers it is given: wrap a copy so the caller's model is left as it was.
    wrapped = keras().models.clone_model(training.copy_model(model), clone_function=wrap)
    training.fit(wrapped, x, y, config.fine_tune_epochs, config.batch_size, config.learning_rate, on_epoch=on_epoch)
    return tfmot.clustering.keras.strip_clustering(wrapped)


def layers_to_cluster(model, config: ClusterConfig) -> set[str]:
    """Names of the layers `config` clusters in `model`; raises EdgepressError naming any tfmot cannot cluster."""
    by_name = {layer.name: layer for layer in model.layers}
    if config.layers is not None:
        unknown = [n for n in config.layers if n not in by_name]
        if unknown:
            raise EdgepressError(
                f"cluster: no layer named {', '.join(unknown)} in the model. Its layers: {', '.join(by_name)}."
            )
        asked = [by_name[n] for n in config.layers]
        # A layer asked for by name must have kernels to cluster; BatchNormalization, say, has none.
        unfit = [layer for layer in asked if not _clusterable(layer)]
    else:
        asked = [layer for layer in model.layers if _clusterable(layer)]
        # By default, leave alone what tfmot deliberately does not cluster (BatchNormalization, DepthwiseConv2D),
        # but refuse a layer with weights tfmot does not know (PReLU, a custom layer), like prune does.
        unfit = [layer for layer in model.layers if layer.trainable_weights and not _known(layer)]
    if unfit:
        described = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in unfit)
        fitting = [layer.name for layer in model.layers if _clusterable(layer)]
        raise EdgepressError(
            f"cluster: tfmot cannot cluster layer {described}. Cluster only the layers it can with "
            f"`layers: [{', '.join(fitting)}]` in the cluster step, or drop the step."
        )
    if not asked:
        raise EdgepressError(
            f"cluster: '{model.name}' has no layer whose weights tfmot can cluster (Conv, Dense, Embedding, RNN "
            "layers). Drop the cluster step."
        )
    return {layer.name for layer in asked}


def _known(layer) -> bool:
    """tfmot's clustering registry knows the layer (it may still have nothing to cluster)."""
    from tensorflow_model_optimization.python.core.clustering.keras import clusterable_layer, clustering_registry

    return isinstance(layer, clusterable_layer.ClusterableLayer) or clustering_registry.ClusteringRegistry.supports(
        layer
    )


def _clusterable(layer) -> bool:
    """The layer has weights tfmot clusters: a registry entry with weight names, an RNN, or a ClusterableLayer."""
    from tensorflow_model_optimization.python.core.clustering.keras import clustering_registry

    if not layer.trainable_weights or not _known(layer):
        return False
    # The registry lists the clustered weights by layer class; an empty list (BatchNormalization,
    # DepthwiseConv2D) means tfmot leaves the layer as it is. RNN and ClusterableLayer are not listed.
    names = clustering_registry.ClusteringRegistry._LAYERS_WEIGHTS_MAP.get(type(layer))
    return names is None or bool(names)


def unique_values(model) -> dict[str, int]:
    """Distinct values in the kernel of each layer of `model` that has one: what clustering bounds."""
    return {
        layer.name: int(np.unique(layer.kernel.numpy()).size) for layer in model.layers if hasattr(layer, "kernel")
    }


@register
class Cluster(Step):
    config = ClusterConfig
    kinds = frozenset({"tf_keras"})  # tfmot wraps tf_keras layers only
    needs = "tfmot weight clustering wraps Keras layers and fine-tunes them"

    def check(self, model, config, context):
        layers_to_cluster(model, config)

    def run(self, model, x, y, config, context):
        return cluster(model, x, y, config, on_epoch=context.on_epoch), {}
