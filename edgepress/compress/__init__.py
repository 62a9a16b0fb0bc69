"""Compression steps: Keras model in, Keras model out, each with its own pydantic config.

    pruned = edgepress.compress.prune(model, x_train, y_train, target_sparsity=0.8)
    aware = edgepress.compress.qat(pruned, x_train, y_train, fine_tune_epochs=1)
"""

from edgepress.compress.prune import PruneConfig, prune, sparsity
from edgepress.compress.qat import QatConfig, qat

# Step configs by their recipe `type`, and the function that runs each.
STEPS = {"prune": prune, "qat": qat}

__all__ = ["STEPS", "PruneConfig", "QatConfig", "prune", "qat", "sparsity"]
