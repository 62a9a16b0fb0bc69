"""Compression steps: Keras model in, Keras model out, each with its own pydantic config.

    pruned = edgepress.compress.prune(model, x_train, y_train, target_sparsity=0.8)
    aware = edgepress.compress.qat(pruned, x_train, y_train, fine_tune_epochs=1)
"""

from collections.abc import Callable
from dataclasses import dataclass

from edgepress.compress.prune import PruneConfig, layers_to_prune, prune, sparsity
from edgepress.compress.qat import QatConfig, check_quantizable, qat


@dataclass(frozen=True)
class Step:
    """What a recipe step runs, and the check that refuses a model before any work is done."""

    run: Callable  # (model, x, y, config, on_epoch) -> model
    validate: Callable  # (model, config) -> None, raises EdgepressError


STEPS = {"prune": Step(prune, layers_to_prune), "qat": Step(qat, check_quantizable)}

__all__ = ["STEPS", "PruneConfig", "QatConfig", "Step", "prune", "qat", "sparsity"]
