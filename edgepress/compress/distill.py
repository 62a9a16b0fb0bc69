"""Knowledge distillation: train a smaller student to match the model as it enters the step (the teacher).

    student = distill(teacher, x_train, y_train, student={"width": 0.25}, epochs=10)
    recovered = distill(pruned, x_train, y_train, teacher="source", source=original)

`teacher: source` takes the run's original model as the teacher instead, and without a `student` the
model entering the step is the student, trained on from its weights: after structured_prune, this
recovers accuracy from the unpruned model rather than from the labels alone.

The student is a zoo architecture (`{zoo: seed_mlp}`), a model file (`{path: student.keras}`, trained
from the weights it holds), or a width-scaled copy of the teacher (`{width: 0.25}`: every Conv and
Dense layer but the classifier keeps round(width x its filters or units), with fresh weights). The
loss is Hinton's: alpha x cross-entropy with the labels + (1 - alpha) x T^2 x KL(teacher || student),
both softened by the temperature T; the T^2 keeps the soft gradients as large as the hard ones. With
alpha 0 no label is used, so unlabelled samples (`y=None`, or `unlabelled: file.npz` in a recipe) work.

`compare_scratch` also trains the same student, from the same starting weights, on the labels alone for
the same epochs: the report then shows what the teacher added. `distill_and_score` returns those
numbers with the student; `distill` returns the student only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from edgepress.compat import keras, keras_of
from edgepress.compress.step import Step, holds_program, register
from edgepress.errors import EdgepressError
from edgepress.models import training
from edgepress.models.datasets import checked_inputs, fit_to_input, read_npz_arrays
from edgepress.models.keras_graph import calls, is_graph, with_widths
from edgepress.specs.section import Section
from edgepress.values import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE


class StudentSpec(Section):
    """The student: exactly one of a zoo architecture, a model file, or a width-scaled copy of the teacher."""

    model_config = ConfigDict(extra="forbid")

    zoo: str | None = Field(None, description="Zoo architecture, trained from scratch (see `edgepress models`).")
    path: str | None = Field(None, description=".keras / .h5 file or SavedModel; trained from the weights it holds.")
    trusted: bool = Field(
        False, description="Trust the student file: allow code saved in it (Lambda layers) to run when it is loaded."
    )
    width: float | None = Field(
        None, gt=0, le=1, description="The teacher's architecture with round(width x channels) in each Conv and Dense "
        "layer but the classifier (and round(width x heads) in each MultiHeadAttention), with fresh weights."
    )

    @model_validator(mode="after")
    def _one_source(self) -> StudentSpec:
        given = [k for k in ("zoo", "path", "width") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give the student exactly one of zoo, path or width (got {', '.join(given) or 'none'})")
        return self

    def describe(self) -> str:
        return f"zoo:{self.zoo}" if self.zoo else f"width {self.width:g}" if self.width else str(self.path)


class DistillConfig(Section):
    """Knowledge distillation from the model entering the step (the teacher) into a student."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["distill"] = "distill"
    teacher: Literal["input", "source"] = Field(
        "input", description="input: the model as it enters the step; source: the run's original model (e.g. to "
        "recover what a structured_prune before this step cost)."
    )
    student: StudentSpec | None = Field(
        None, description="Default (only with teacher: source): the model entering the step, trained on from its "
        "weights."
    )
    temperature: float = Field(4.0, gt=0, description="Softens both output distributions; 2-10 is usual.")
    alpha: float = Field(
        0.1, ge=0, le=1, description="Weight of the hard-label loss; the soft (teacher) loss gets 1 - alpha, x T^2."
    )
    epochs: int = Field(10, le=MAX_EPOCHS, ge=1, description="Epochs of training the student.")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(1e-3, gt=0, le=MAX_LEARNING_RATE)
    unlabelled: str | None = Field(
        None, description=".npz with `x`: distil on these samples instead of the recipe's training data. It has no "
        "labels, so alpha must be 0."
    )
    compare_scratch: bool = Field(
        False, description="Also train the same student without the teacher (labels only, same epochs) and report it."
    )
    seed: int = 0

    @model_validator(mode="after")
    def _labels_for_what_needs_them(self) -> DistillConfig:
        if self.student is None and self.teacher == "input":
            raise ValueError("give a student (zoo, path or width): without one the model would distil into itself; "
                             "or set teacher: source to train the model entering the step from the original")
        if self.unlabelled is not None and self.alpha != 0:
            raise ValueError(f"unlabelled samples have no labels for the hard loss: set alpha to 0, not {self.alpha}")
        if self.unlabelled is not None and self.compare_scratch:
            raise ValueError("compare_scratch trains on labels, and unlabelled samples have none")
        return self

    def with_paths_from(self, resolve: Callable[[str | None], str | None]) -> DistillConfig:
        """This config with the student file and the unlabelled samples resolved (against the recipe's folder)."""
        student = self.student and self.student.model_copy(update={"path": resolve(self.student.path)})
        return self.model_copy(update={"student": student, "unlabelled": resolve(self.unlabelled)})

    def describe_student(self) -> str:
        return "the model entering the step" if self.student is None else self.student.describe()


def distill(model, x: np.ndarray, y: np.ndarray | None, config: DistillConfig | None = None, on_epoch=None,
            source=None, **options):
    """Distil `model` (the teacher) into the configured student on `x` (and labels `y`); return the student.

    `options` are DistillConfig fields, for calls without a config object:
    distill(teacher, x, y, student={"zoo": "seed_mlp"}, temperature=4). `y=None` needs alpha 0.
    With teacher="source", `source` (a Keras model) is the teacher and `model` what enters the step.
    """
    return distill_and_score(model, x, y, config, on_epoch, source=source, **options)[0]


def distill_and_score(model, x: np.ndarray, y: np.ndarray | None, config: DistillConfig | None = None,
                      on_epoch=None, test: tuple[np.ndarray, np.ndarray] | None = None, source=None,
                      **options) -> tuple[object, dict[str, dict]]:
    """`distill`, returning (student, scores): scores["distill"] has the teacher's, the distilled student's and
    (with compare_scratch) the scratch student's accuracy on `test` (inputs shaped for `model`, labels),
    or None for each without `test`."""
    config = config or DistillConfig(**options)
    teacher = _teacher(model, config, source)
    if config.unlabelled is not None:
        x, y = _load_unlabelled(config.unlabelled, model), None
    if y is None and config.alpha != 0:
        raise EdgepressError(
            f"distill: without labels only the teacher's soft targets can teach; set alpha to 0 (it is {config.alpha})."
        )
    if y is None and config.compare_scratch:
        raise EdgepressError("distill: compare_scratch trains the student on labels; give labels or drop it.")

    # The student's fresh weights, too, come from the seed: in the Keras that builds it (a zoo student is tf_keras,
    # a width-scaled one the teacher's).
    builder = teacher if config.student is not None and config.student.width is not None else None
    (keras() if builder is None else keras_of(builder)).utils.set_random_seed(config.seed)
    student = student_like(model, config, source)
    if config.student is None:  # the model entering the step, trained on: leave the caller's model as it was
        student = training.copy_model(model)
    shape, teacher_shape = tuple(student.input_shape[1:]), tuple(teacher.input_shape[1:])
    x_student = fit_to_input(x, shape, "distillation samples")
    # The teacher is frozen: its outputs for the whole training set are computed once, not each epoch.
    teacher_x = fit_to_input(x, teacher_shape, "distillation samples")
    teacher_log_probs = _log_probs(training.predict(teacher, teacher_x), training.outputs_logits(teacher))
    scratch = training.copy_model(student) if config.compare_scratch else None  # same starting weights
    _train(student, x_student, y, teacher_log_probs, config, config.alpha, _shifted(on_epoch, config, 0))
    if scratch is not None:
        _train(scratch, x_student, y, None, config, 1.0, _shifted(on_epoch, config, config.epochs))

    def score(m, test_x) -> float | None:
        return None if test is None else training.accuracy(training.predict(m, test_x), test[1])

    test_x = None if test is None else fit_to_input(test[0], shape, "test samples")
    scores = {
        "student": config.describe_student(),
        "teacher": config.teacher,
        "temperature": config.temperature,
        "alpha": config.alpha,
        "epochs": config.epochs,
        "teacher_accuracy": score(teacher, None if test is None else fit_to_input(test[0], teacher_shape, "test")),
        "student_accuracy": score(student, test_x),
        "scratch_accuracy": None if scratch is None else score(scratch, test_x),
    }
    return student, {"distill": scores}


def check_distillable(model, config: DistillConfig, source=None) -> None:
    """Raise EdgepressError before any work if the student cannot learn from its teacher (names what is at fault)."""
    student_like(model, config, source)
    if config.unlabelled is not None:
        _load_unlabelled(config.unlabelled, model)


def student_like(model, config: DistillConfig, source=None):
    """An untrained student as `config` describes it, checked against its teacher: the model the step will
    return, so the steps after it are validated against the student's layers. `model` enters the step;
    `source` is the run's original model (the teacher with teacher: source)."""
    teacher = _teacher(model, config, source)
    student = model if config.student is None else make_student(teacher, config.student)
    described = config.describe_student()
    teacher_out, student_out = _single_output(teacher, "teacher"), _single_output(student, "student")
    if teacher_out != student_out:
        raise EdgepressError(
            f"distill: the student ({described}) outputs shape {student_out}, the teacher "
            f"'{teacher.name}' {teacher_out}; a student must predict the same classes. Give a student whose "
            f"last layer has {teacher_out[-1]} units."
        )
    teacher_in, student_in = tuple(teacher.input_shape[1:]), tuple(student.input_shape[1:])
    try:
        fit_to_input(np.zeros((1, *teacher_in), np.float32), student_in)
    except EdgepressError:
        raise EdgepressError(
            f"distill: the student ({described}) takes inputs of shape {student_in}, and the "
            f"teacher's samples {teacher_in} can be neither reshaped nor resized to it. Give a student with "
            f"input {teacher_in}, or one whose input holds the same number of values."
        ) from None
    return student


def _teacher(model, config: DistillConfig, source):
    if config.teacher == "input":
        return model
    if source is None:
        raise EdgepressError(
            "distill: teacher: source needs the run's original model; in Python pass it as "
            "distill(model, x, y, teacher='source', source=original_model)."
        )
    return source


def make_student(teacher, spec: StudentSpec):
    """A new student model for `teacher`: a zoo build, a loaded file, or a width-scaled rebuild."""
    if spec.zoo is not None:
        from edgepress.models import zoo

        # Keras names unnamed layers from a process-wide counter (dense_7, ...): restart it, so the student has
        # the same layer names when it is checked and when it is trained, and a later step's `layers:` holds.
        keras().backend.reset_uids()
        student = zoo.build(spec.zoo, num_classes=int(teacher.output_shape[-1]))
        if not isinstance(student, keras().Model):
            raise EdgepressError(
                f"distill: zoo model '{spec.zoo}' is not a Keras model, and the student is trained in Keras. "
                "Choose a Keras zoo model (see `edgepress models`)."
            )
        return student
    if spec.path is not None:
        from edgepress.models.loading import load_model

        return load_model(spec.path, trusted=spec.trusted)
    return width_scaled(teacher, spec.width)


def width_scaled(model, width: float):
    """`model`'s architecture with round(width x filters/units/heads) in each layer but the classifier, fresh
    weights.

    Rebuilt from the model's config, so the layers keep their names (a later step's `layers:` still
    applies). Raises EdgepressError naming a layer that would keep no channel.
    """
    if not is_graph(model):
        raise EdgepressError(
            f"distill: student width needs a Sequential or functional teacher to rebuild; '{model.name}' is a "
            "subclassed model. Give the student as a zoo name or a model file."
        )
    classifiers = _classifiers(model)
    widths = {}
    for layer in model.layers:
        layer_config = _config(layer)
        if layer.name in classifiers:
            continue
        for key in ("filters", "units", "num_heads"):  # an attention layer keeps its head size, with fewer heads
            channels = layer_config.get(key)
            if isinstance(channels, int):
                scaled = round(width * channels)
                if scaled < 1:
                    raise EdgepressError(
                        f"distill: student width {width:g} leaves layer '{layer.name}' with no {key} "
                        f"(round({width:g} x {channels}) = 0). Use a width of at least {1 / channels:.3g}."
                    )
                widths[layer.name] = scaled
    try:
        return with_widths(model, widths, name=f"{model.name}_student")
    except Exception as e:  # a layer whose config depends on the old widths (a Reshape to a fixed shape, ...)
        raise EdgepressError(
            f"distill: the teacher '{model.name}' cannot be rebuilt at width {width:g}: {e}. Give the student as "
            "a zoo name or a model file."
        ) from None


def _classifiers(model) -> set[str]:
    """The Conv/Dense layers whose units are the model's outputs: walk back from each output through layers
    without channels of their own (Activation, Softmax, Flatten, Dropout, ...)."""
    graph = calls(model, step="distill")
    made_by = {key: call for call in graph.calls for key in call.outputs}
    found = set()
    for key in graph.outputs:
        call = made_by.get(key)
        while call is not None and not any(isinstance(_config(call.layer).get(k), int) for k in ("filters", "units")):
            if len(call.inputs) != 1:
                break
            call = made_by.get(call.inputs[0])
        if call is not None:
            found.add(call.layer.name)
    return found


def _config(layer) -> dict:
    return layer.get_config() if hasattr(layer, "get_config") else {}


def _single_output(model, role: str) -> tuple:
    if len(model.outputs) != 1:
        raise EdgepressError(
            f"distill: the {role} '{model.name}' has {len(model.outputs)} outputs; distillation needs one output "
            "(the class scores)."
        )
    return tuple(model.output_shape[1:])


def _load_unlabelled(path: str, teacher) -> np.ndarray:
    if not Path(path).exists():
        raise EdgepressError(f"distill: unlabelled samples {path} not found; give an .npz file with an `x` array.")
    (x,) = read_npz_arrays(Path(path), ["x"])  # a regular file, its header's declared size checked before loading
    return fit_to_input(checked_inputs(x, f"distill: {path}: 'x'"), tuple(teacher.input_shape[1:]), Path(path).name)


def _log_probs(outputs: np.ndarray, logits: bool) -> np.ndarray:
    """Log-probabilities from a model's outputs, whether it ends in logits or in a softmax."""
    if logits:
        shifted = outputs - outputs.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return np.log(np.clip(outputs, 1e-7, 1.0))


def _train(student, x: np.ndarray, y: np.ndarray | None, teacher_log_probs: np.ndarray | None,
           config: DistillConfig, alpha: float, on_epoch) -> None:
    """Train `student` for config.epochs on alpha x hard loss + (1 - alpha) x T^2 x soft loss (Adam, shuffled)."""
    from edgepress.compat import tensorflow

    tf, k = tensorflow(), keras_of(student)
    k.utils.set_random_seed(config.seed)
    optimizer = k.optimizers.Adam(config.learning_rate)
    temperature = float(config.temperature)
    student_logits = training.outputs_logits(student)
    # Placeholders keep one code path: a zero weight switches a loss term off.
    labels = np.zeros(len(x), np.int64) if y is None else np.asarray(y, np.int64)
    soft_targets = np.zeros((len(x), 1), np.float32) if teacher_log_probs is None else teacher_log_probs

    @tf.function
    def step(xb, yb, tb):
        with tf.GradientTape() as tape:
            out = student(xb, training=True)
            log_p = tf.nn.log_softmax(out) if student_logits else tf.math.log(tf.clip_by_value(out, 1e-7, 1.0))
            hard = -tf.reduce_mean(tf.gather(log_p, yb, axis=1, batch_dims=1))
            loss = alpha * hard
            if alpha < 1:
                teacher_soft = tf.nn.softmax(tb / temperature)
                student_soft = tf.nn.log_softmax(log_p / temperature)
                kl = tf.reduce_sum(teacher_soft * (tf.math.log(teacher_soft + 1e-12) - student_soft), axis=-1)
                loss += (1 - alpha) * temperature**2 * tf.reduce_mean(kl)
            loss += tf.add_n(student.losses) if student.losses else 0.0
        grads = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(grads, student.trainable_variables, strict=True))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(log_p, axis=-1), yb), tf.float32))
        return loss, correct

    rng = np.random.default_rng(config.seed)
    for epoch in range(config.epochs):
        order = rng.permutation(len(x))
        losses, correct = [], 0.0
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss, right = step(x[batch], labels[batch], soft_targets[batch])
            losses.append(float(loss))
            correct += float(right)
        if on_epoch is not None:
            logs = {"loss": float(np.mean(losses))}
            if y is not None:
                logs["accuracy"] = correct / len(x)
            on_epoch(epoch + 1, config.epochs, logs, student)


def _shifted(on_epoch, config: DistillConfig, done: int):
    """Progress over both trainings (distilled, then scratch) as one count of epochs."""
    if on_epoch is None:
        return None
    total = config.epochs * (2 if config.compare_scratch else 1)
    return lambda epoch, _, logs, model=None: on_epoch(done + epoch, total, logs, model)


@register
class Distill(Step):
    config = DistillConfig
    kinds = frozenset({"keras3", "tf_keras", "torch"})
    needs = "it trains a Keras student model on the model's outputs"

    def check(self, model, config, context):
        if holds_program(model):
            from edgepress.compress.distill_torch import check_program_distill

            return check_program_distill(config)
        check_distillable(model, config, source=context.source)

    def result_like(self, model, config, context):
        return model if holds_program(model) else student_like(model, config, source=context.source)

    def run(self, model, x, y, config, context):
        if holds_program(model):  # a PyTorch program, trained on in PyTorch from the run's original model
            from edgepress.compress.distill_torch import distill_program

            teacher = model if config.teacher == "input" else context.source
            return distill_program(model, teacher, x, y, config, context.on_epoch, test=context.test)
        # The details: the teacher's and the students' scores on the test split.
        return distill_and_score(model, x, y, config, context.on_epoch, test=context.test, source=context.source)

