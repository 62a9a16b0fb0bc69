"""Logit distillation of a decoder language model into a smaller char_gpt student.

    - {type: lm_distill, width: 64, layers: 1, heads: 2, epochs: 3}

The model entering the step is the teacher (a decoder: the zoo's char_gpt or a model directory); the student is a
fresh char_gpt of the given size with the teacher's vocabulary and position limit, trained on the run's token
windows with `alpha` * cross-entropy on the true next tokens + (1 - `alpha`) * KL divergence to the teacher's
distribution over the vocabulary at `temperature` (Hinton et al. 2015; edgepress.models.char_gpt.train_char_gpt).
Its result is the student, exported and measured like any decoder.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgepress.compress.step import Step, StepContext, register
from edgepress.errors import EdgepressError
from edgepress.values import MAX_EPOCHS


class LMDistillConfig(BaseModel):
    """Distil the decoder LM into a smaller char_gpt student (logits over the vocabulary)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["lm_distill"] = "lm_distill"
    width: int = Field(64, ge=8, description="The student's width (a multiple of heads).")
    layers: int = Field(1, ge=1, le=64, description="The student's transformer blocks.")
    heads: int = Field(2, ge=1, description="The student's attention heads.")
    mlp: int = Field(0, ge=0, description="The student's gated MLP units; 0: twice its width.")
    temperature: float = Field(2.0, gt=0, description="Softens both distributions; 1-4 is usual for LMs.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the true next tokens' cross-entropy; the rest "
                         "goes to matching the teacher.")
    epochs: int = Field(3, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> LMDistillConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


@register
class LMDistill(Step):
    config = LMDistillConfig
    kinds = frozenset({"decoder"})
    needs = "it needs a decoder language model (model.zoo: char_gpt, or a model directory)"

    def check(self, model, config: LMDistillConfig, context: StepContext) -> None:
        teacher = model.config
        if config.width * config.layers >= teacher.width * teacher.layers and config.layers >= teacher.layers:
            raise EdgepressError(
                f"lm_distill makes a student of width {config.width} with {config.layers} layer(s), no smaller than "
                f"its teacher (width {teacher.width}, {teacher.layers} layers): give the student a smaller width or "
                "fewer layers."
            )

    def result_like(self, model, config: LMDistillConfig, context: StepContext):
        return _student(model, config)

    def notes(self, model, config: LMDistillConfig) -> list[str]:
        return [f"student char_gpt width {config.width}, {config.layers} layer(s), {config.heads} heads, taught at "
                f"temperature {config.temperature} (alpha {config.alpha})"]

    def run(self, model, x, y, config: LMDistillConfig, context: StepContext):
        from edgepress.models.char_gpt import train_char_gpt

        student = _student(model, config)
        train_char_gpt(student, x, y, config.epochs, config.batch_size, config.learning_rate, context.on_epoch,
                       config.seed, teacher=model, temperature=config.temperature, alpha=config.alpha)
        student.edgepress_window = getattr(model, "edgepress_window", None)
        return student, {"teacher_params": int(sum(p.numel() for p in model.parameters()))}


def _student(teacher, config: LMDistillConfig):
    from edgepress.models.char_gpt import build_char_gpt

    student = build_char_gpt(vocab=teacher.config.vocab, width=config.width, layers=config.layers,
                             heads=config.heads, max_len=teacher.config.max_len, mlp=config.mlp, seed=config.seed)
    student.edgepress_window = getattr(teacher, "edgepress_window", None)
    return student
