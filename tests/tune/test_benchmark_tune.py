"""benchmarks/tune.py on its --tiny configuration (slow: a few minutes): it writes its section and plot."""

import subprocess
import sys

import pytest

from tests.conftest import MNIST, REPO


@pytest.mark.slow
def test_the_tune_benchmark_runs_tiny_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    mobilenet = "### MobileNetV2 alpha 0.35, MNIST resized to 32x32x3\n\nmeasured before\n\nMeasured on then.\n"
    results.write_text("# Benchmark results\n\n## compression\n\nkept\n\n## tune\n\n" + mobilenet)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "tune.py"), "--tiny", "--models", "seed_cnn", "--data", str(MNIST),
         "--work", str(tmp_path / "work"), "--results", str(results)],
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert "## compression\n\nkept" in text
    section = text[text.index("## tune"):]
    for contender in ("float32 (baseline)", "post-training int8", "mnist_cnn_fast.yaml int8", "edgepress tune"):
        assert f"| {contender}" in section
    assert section.index("### seed CNN") < section.index(mobilenet)  # a model not run keeps its numbers
    assert "wall time" in section and (tmp_path / "tune_seed_cnn.png").stat().st_size > 1000
