"""Compression steps: Keras model in, Keras model out, each with its own pydantic config.

    pruned = edgepress.compress.prune(model, x_train, y_train, target_sparsity=0.8)
    aware = edgepress.compress.qat(pruned, x_train, y_train, fine_tune_epochs=1)
    student = edgepress.compress.distill(model, x_train, y_train, student={"width": 0.25})
    clustered = edgepress.compress.cluster(model, x_train, y_train, number_of_clusters=16)

Each step is one module registered with `edgepress.compress.step.register`; `registered()` lists them all.
"""

from edgepress.compress.cluster import ClusterConfig, cluster
from edgepress.compress.distill import DistillConfig, distill
from edgepress.compress.equalize import EqualizeConfig, equalize
from edgepress.compress.prune import PruneConfig, prune, sparsity
from edgepress.compress.qat import QatConfig, qat
from edgepress.compress.step import STEPS, Step, StepContext, register, registered
from edgepress.compress.structured_prune import StructuredPruneConfig, structured_prune

__all__ = [
    "STEPS", "ClusterConfig", "DistillConfig", "EqualizeConfig", "PruneConfig", "QatConfig", "Step", "StepContext",
    "StructuredPruneConfig", "cluster", "distill", "equalize", "prune", "qat", "register", "registered", "sparsity",
    "structured_prune",
]
