"""benchmarks/compression.py: its RESULTS.md writing (fast) and the whole benchmark (slow, minutes)."""

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import MNIST, REPO


def _compression():
    spec = importlib.util.spec_from_file_location("compression", REPO / "benchmarks" / "compression.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writing_a_section_keeps_the_others(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## accuracy-aware quantization\n\nkept\n\n## compression\n\nold\n")
    write_section = _compression().write_section

    write_section(results, "compression", "## compression\n\nnew\n")
    write_section(results, "other", "## other\n\nadded\n")

    text = results.read_text()
    assert "## accuracy-aware quantization\n\nkept" in text and "old" not in text
    assert "## compression\n\nnew\n\n## other\n\nadded\n" in text  # a blank line before the appended section


@pytest.mark.slow
def test_the_compression_benchmark_runs_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## accuracy-aware quantization\n\nkept\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compression.py"), "--data", str(MNIST), "--work",
         str(tmp_path / "work"), "--results", str(results), "--runs", "20", "--warmup", "2", "--rounds", "1"],
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    text = results.read_text()
    assert "## accuracy-aware quantization\n\nkept" in text
    section = text[text.index("## compression"):]
    for variant in ("float32 (baseline)", "full int8 PTQ", "80% magnitude pruning + dynamic range", "QAT (int8)",
                    "edgepress tflite dynamic", "edgepress tflite int8"):
        assert f"| {variant} |" in section
    assert "Targets for edgepress's recipe" in section


@pytest.mark.slow
def test_the_reproducibility_benchmark_runs_on_a_tiny_recipe(tmp_path):
    import yaml

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "model": {"zoo": "seed_cnn", "train_epochs": 1},
        "data": {"dataset": "digits", "train_size": 200, "test_size": 50, "calibration_samples": 20},
        "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "onnx", "precision": "fp32"}],
        "measure": {"runs": 20, "warmup": 2, "max_seconds": 2},
    }))
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## compression\n\nkept\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "reproducibility.py"), "--recipe", str(recipe), "--work",
         str(tmp_path / "work"), "--results", str(results), "--runs", "200", "--blocks", "4"],
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    text = results.read_text()
    assert "## compression\n\nkept" in text
    section = text[text.index("## reproducibility"):]
    assert "Two runs: accuracy identical for 2 of 2 artifacts" in section  # same seeds, same data: exactly
    for name in ("tiny_fp32.tflite", "tiny_fp32.onnx"):
        assert section.count(f"| {name} |") == 2  # in the agreement table and in the overhead table
    assert "Runner timing loop against a bare runtime loop" in section
    assert "`edgepress compare run1 run2` (default limits" in section
    assert "when it times both runs' files again" in section
