"""distill for a PyTorch program: the program entering the step trained on from the run's original model.

    student, details = distill_program(program, teacher, x, y, config, test=(x_test, y_test))

The student is the program's own module (`torch.export`'s graph module, whose weights are trainable parameters),
trained in PyTorch on the teacher's softened outputs (and the labels, weighted by `alpha`), then exported again
with torch.export at the batch the program takes (its fixed batch, or a dynamic one). The teacher is any model the
run can evaluate (its outputs are computed once, with its own `predict`). Only `teacher: source` with no `student`
applies: a PyTorch student of another architecture is the user's to build.
"""

from __future__ import annotations

import copy

import numpy as np

from edgepress.errors import EdgepressError


def check_program_distill(config) -> None:
    """Refuse a distill config a PyTorch program cannot take (names what would work)."""
    if config.student is not None or config.unlabelled is not None or config.compare_scratch:
        raise EdgepressError(
            "distill on a PyTorch program trains the program itself on from the run's original model: use "
            "`teacher: source` with no `student` (a zoo, file or width student is a Keras model), and no "
            "unlabelled / compare_scratch."
        )


def distill_program(program, teacher, x: np.ndarray, y: np.ndarray, config, on_epoch=None,
                    test: tuple[np.ndarray, np.ndarray] | None = None):
    """The program trained on `teacher`'s outputs as a new TorchSource, and the step's report details."""
    import torch

    from edgepress.models.torch_program import TorchSource, save_torch_program

    check_program_distill(config)
    torch.manual_seed(config.seed)
    module = copy.deepcopy(program.module)
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    logits = teacher.predict(x)
    ends_in_softmax = bool(np.allclose(logits.sum(-1), 1.0, atol=1e-3) and logits.min() >= 0)
    teacher_logits = np.log(np.clip(logits, 1e-9, 1)) if ends_in_softmax else logits
    soft = torch.softmax(torch.from_numpy(teacher_logits.astype(np.float32)) / config.temperature, -1)
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=program.input_dtype))
    ys = torch.from_numpy(np.asarray(y, np.int64))
    batch = program.fixed_batch or config.batch_size
    optimizer = torch.optim.Adam(module.parameters(), config.learning_rate)
    t = config.temperature
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(xs))
        total = 0.0
        for start in range(0, len(xs) - (len(xs) % batch if program.fixed_batch else 0), batch):
            index = order[start : start + batch]
            out = module(xs[index])
            kd = torch.nn.functional.kl_div(torch.log_softmax(out / t, -1), soft[index], reduction="batchmean")
            loss = (1 - config.alpha) * kd * t * t + config.alpha * torch.nn.functional.cross_entropy(out, ys[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(index)
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, {"loss": total / len(xs)})
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    sample = xs[: program.fixed_batch or 2]  # a dynamic batch from a sample of 2: torch.export specializes 1
    if program.fixed_batch:
        student = TorchSource.from_trained(module, lambda m, path: save_fixed(m, sample, path))
    else:
        student = TorchSource.from_trained(module, lambda m, path: save_torch_program(m, sample, path))

    def score(model) -> float | None:
        return None if test is None else float(np.mean(np.argmax(model.predict(test[0]), -1) == test[1]))

    details = {"student": "the model entering the step", "teacher": config.teacher, "temperature": t,
               "alpha": config.alpha, "epochs": config.epochs, "teacher_accuracy": score(teacher),
               "student_accuracy": score(student), "scratch_accuracy": None}
    return student, {"distill": details}


def save_fixed(module, sample, path) -> None:
    """torch.export at the program's own fixed batch (its reshapes name it)."""
    import torch

    from edgepress import files

    program = torch.export.export(module, (sample,))
    with files.atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
