"""distill of a PyTorch program with a dynamic batch writes a program that still takes any batch (torch.export
specializes a sample batch of 1 to a constant, so the student is exported from a sample of 2)."""

import numpy as np
import torch

from edgepress.compress.distill import DistillConfig
from edgepress.compress.distill_torch import distill_program
from edgepress.models.torch_program import TorchSource
from tests.models import encoders


def test_a_distilled_program_keeps_its_dynamic_batch():
    program = TorchSource.from_module(encoders.torch_encoder_module(epochs=1), torch.zeros(2, 8, 8))
    assert program.fixed_batch is None
    x, y = encoders.digits_rows(32)
    student, _ = distill_program(program, program, x, y, DistillConfig(teacher="source", epochs=1, batch_size=16))
    assert student.fixed_batch is None
    assert student.predict(np.asarray(x[:5], np.float32)).shape == (5, 10)
