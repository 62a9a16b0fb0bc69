"""Compression steps: Keras model in, Keras model out, each with its own pydantic config.

    pruned = edgepress.compress.prune(model, x_train, y_train, target_sparsity=0.8)
    aware = edgepress.compress.qat(pruned, x_train, y_train, fine_tune_epochs=1)
    student = edgepress.compress.distill(model, x_train, y_train, student={"width": 0.25})
    clustered = edgepress.compress.cluster(model, x_train, y_train, number_of_clusters=16)
"""

from collections.abc import Callable
from dataclasses import dataclass

from edgepress.compress.cluster import ClusterConfig, cluster, layers_to_cluster
from edgepress.compress.distill import DistillConfig, check_distillable, distill, distill_and_score, student_like
from edgepress.compress.equalize import EqualizeConfig, check_equalizable, equalize, equalize_notes
from edgepress.compress.prune import PruneConfig, layers_to_prune, prune, sparsity
from edgepress.compress.qat import QatConfig, check_quantizable, qat
from edgepress.compress.structured_prune import (
    StructuredPruneConfig,
    check_structured_prunable,
    plan_notes,
    structured_prune,
)


@dataclass(frozen=True)
class Step:
    """What a recipe step runs, and the check that refuses a model before any work is done."""

    run: Callable  # (model, x, y, config, on_epoch) -> model
    validate: Callable  # (model, config) -> None, raises EdgepressError
    # (model, config) -> lines for the run log before the step runs (e.g. the layers it leaves whole)
    notes: Callable | None = None
    # (model, config) -> an untrained model built like the step's result, for a step that replaces the
    # architecture (distill's student): the steps after it are validated against that model.
    result_like: Callable | None = None
    # (model, x, y, config, on_epoch, test) -> (model, {key: numbers}): a run that also scores, on the test
    # split, what the step compares itself with (distill: the teacher, the student trained from scratch);
    # the numbers go into the step's row of the report.
    scored: Callable | None = None
    # validate, result_like and scored also take `source=`, the run's original model (distill's teacher: source).
    needs_source: bool = False


STEPS = {
    "prune": Step(prune, layers_to_prune),
    "qat": Step(qat, check_quantizable),
    "structured_prune": Step(structured_prune, check_structured_prunable, plan_notes),
    "cluster": Step(cluster, layers_to_cluster),
    "distill": Step(distill, check_distillable, result_like=student_like, scored=distill_and_score,
                    needs_source=True),
    "equalize": Step(equalize, check_equalizable, equalize_notes),
}

__all__ = [
    "STEPS", "ClusterConfig", "DistillConfig", "EqualizeConfig", "PruneConfig", "QatConfig", "Step",
    "StructuredPruneConfig", "cluster", "distill", "equalize", "prune", "qat", "sparsity", "structured_prune",
]
