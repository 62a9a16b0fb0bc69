"""Hostile input, round two, the last pieces: a valid `.pt2` that reshapes by its dynamic batch exports to ONNX with
that batch kept. Real torch and onnxruntime on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

HANG_S = 300  # far above these runs' minute on a loaded 2-core machine: reaching it means a hang


def run_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from edgepress.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=HANG_S,
                          env={**os.environ, "COLUMNS": "300", **(env or {})})


# -- a .pt2 whose forward reshapes by x.shape[0] -----------------------------------------------------------------


def _batch_reshaping_program(path: Path) -> Path:
    """A program with a dynamic batch whose forward does `h.reshape(h.shape[0], -1)` then a Linear: a tracer folds
    that size into the sample's batch, and the ONNX file then fails at any other batch (GEMM: Dimension mismatch)."""
    import torch

    from edgepress.models.torch_program import save_torch_program

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rows = torch.nn.Linear(8, 4)
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.rows(x))
            return self.head(h.reshape(h.shape[0], -1))

    torch.manual_seed(0)
    return save_torch_program(Flat(), torch.zeros(2, 8, 8), path)


def test_a_pt2_that_reshapes_by_its_dynamic_batch_exports_to_onnx_with_the_batch_kept(tmp_path):
    pytest.importorskip("torch")
    import onnxruntime as ort

    from edgepress.models.torch_program import TorchSource

    program = _batch_reshaping_program(tmp_path / "flat.pt2")
    source = TorchSource(program)
    assert source.fixed_batch is None and source.reads_its_shape
    recipe = {
        "name": "flat",
        "model": {"path": str(program)},
        "data": {"dataset": "digits", "train_size": 100, "test_size": 30, "calibration_samples": 10,
                 "check_samples": 12},
        "exports": [{"format": "onnx", "precision": "fp32"}, {"format": "onnx", "precision": "int8_dynamic"}],
        "measure": {"runs": 2, "warmup": 0},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = run_cli(["run", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "run")], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {a["precision"]: a for a in results["artifacts"]}
    assert rows["fp32"]["check"]["top1_agreement"] == 1.0  # checked on 12 samples in one call
    assert rows["fp32"]["metrics"]["accuracy"] == results["source"]["metrics"]["accuracy"]
    fp32 = tmp_path / "run" / "artifacts" / rows["fp32"]["name"]
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # the batch is symbolic in the file
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        x = rng.normal(size=(batch, 8, 8)).astype(np.float32)
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, source.predict(x), atol=1e-5)
    quantized = ort.InferenceSession(str(tmp_path / "run" / "artifacts" / rows["int8_dynamic"]["name"]),
                                     providers=["CPUExecutionProvider"])
    assert quantized.run(None, {quantized.get_inputs()[0].name: np.zeros((5, 8, 8), np.float32)})[0].shape == (5, 10)
