"""benchmarks/transformers.py on a tiny budget (slow, minutes): every contender is made, measured and reported."""

import subprocess
import sys

import pytest

from tests.conftest import MNIST, REPO

CONTENDERS = ("float (TFLite fp32)", "plain PTQ int8 (TFLite converter)", "LiteRT's quantizer (static_wi8_ai8)",
              "edgepress qat -> tflite int8", "edgepress accuracy-aware int8",
              "edgepress structured_prune + distill -> int8")


@pytest.mark.slow
def test_the_transformers_benchmark_makes_and_measures_every_contender(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transformers.py"), "--tiny", "--data",
                           str(MNIST), "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    section = done.stdout[done.stdout.index("## transformers"):]
    for label in CONTENDERS:
        row = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
        assert " us " not in row and "[" in row  # a p50 with its interval
    assert "QAT of the attention model within 0.5 pt of float" in section
