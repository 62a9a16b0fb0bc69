"""The step protocol: what a compression step declares, and the registry the recipe, the plan and the run read.

A step is one module of `edgepress.compress`: a pydantic config whose `type` field is a Literal (the
recipe's tag), and a `Step` subclass registered with `@register`:

    @register
    class Cluster(Step):
        config = ClusterConfig
        kinds = frozenset({"tf_keras"})                 # tfmot wraps tf_keras layers; a Keras 3 model is bridged

        def check(self, model, config, context):      # refuse a model before any work
            layers_to_cluster(model, config)

        def run(self, model, x, y, config, context):  # the work: a new Keras model and report details
            return cluster(model, x, y, config, on_epoch=context.on_epoch), {}

The recipe schema, `edgepress schema`, the plan's refusals and the run pick the step up from the
registry; nothing else names it. Heavy imports stay inside the step's functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel


@dataclass(frozen=True)
class StepContext:
    """What a step may use besides its model and config."""

    source: Any = None  # the run's original model, as its framework holds it (distill's `teacher: source`)
    before: tuple[str, ...] = ()  # the types of the steps before this one, in order
    test: tuple[np.ndarray, np.ndarray] | None = None  # the test split, shaped for the model entering the step
    on_epoch: Callable[[int, int, dict], None] | None = None


def holds_program(model) -> bool:
    """Whether `model` is a PyTorch program a step trains and reshapes itself: it holds the exported graph
    (`program`) and the module trained on it (`module`), what structured_prune_torch and distill_torch work on.
    Asked of the model, not of its kind's name."""
    return hasattr(model, "program") and hasattr(model, "module")


class Step:
    """One compression transformation: a model in, a model of the same framework out (for Keras, `source.model`).
    Subclasses set `config`, `kinds` and `run`."""

    config: ClassVar[type[BaseModel]]
    # Why it cannot follow a qat step (the recipe is refused with it); None: it can, or its own check decides.
    not_after_qat: ClassVar[str | None] = (
        "after qat every layer is wrapped for quantization-aware training, and a step after it would undo or lose "
        "the learned int8 ranges"
    )
    # The (format, precision) exports a model that went through this step can have; None: any.
    exports_after: ClassVar[frozenset[tuple[str, str]] | None] = None
    # The model kinds (edgepress.models: keras3, tf_keras, ...) it transforms natively. A Keras 3 model given to a
    # step that takes tf_keras only (tfmot's) is bridged to tf_keras first (edgepress.models.bridge), by the plan.
    kinds: ClassVar[frozenset[str]] = frozenset({"tf_keras"})
    # What it needs of a model, for the refusal of a model of another kind (a plain SavedModel, an ONNX file).
    needs: ClassVar[str] = "it needs a Keras model"

    @classmethod
    def type(cls) -> str:
        return cls.config.model_fields["type"].default

    def bridges(self, model) -> bool:
        """Whether the plan must rebuild `model` (a Source) in tf_keras for this step: it is not of a kind the step
        transforms natively."""
        return model.kind not in self.kinds

    def resolve(self, config: BaseModel, before: Sequence[str]) -> BaseModel:
        """The config with choices that depend on the steps before it made (qat's `preserve: auto`)."""
        return config

    def check(self, model, config: BaseModel, context: StepContext) -> None:
        """Raise EdgepressError if the step cannot apply to `model` (names what is at fault and what to do)."""

    def result_like(self, model, config: BaseModel, context: StepContext):
        """A model shaped like the step's result, for checking the steps after it (default: `model` itself)."""
        return model

    def notes(self, model, config: BaseModel) -> list[str]:
        """Lines for the run log before the step runs (e.g. the layers it leaves whole)."""
        return []

    def run(self, model, x: np.ndarray, y: np.ndarray, config: BaseModel, context: StepContext) -> tuple[Any, dict]:
        """The compressed Keras model, and details for the step's row of the report."""
        raise NotImplementedError


STEPS: dict[str, Step] = {}


def register(cls: type[Step]) -> type[Step]:
    """Register a Step subclass under its config's `type`."""
    name = cls.type()
    if name in STEPS:
        raise ValueError(f"two compression steps are registered as '{name}'")
    STEPS[name] = cls()
    return cls


def registered() -> dict[str, Step]:
    """Every step, after importing each module of `edgepress.compress` (a new module is found by itself)."""
    import importlib
    import pkgutil

    import edgepress.compress as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return STEPS
