"""benchmarks/lm.py at a tiny size (slow: it trains and measures both models): its section is written from the runs."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_lm_benchmark_runs_and_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## compression\n\nkept\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "lm.py"), "--work", str(tmp_path / "work"), "--results",
         str(results), "--train-size", "200", "--test-size", "8", "--epochs", "1", "--runs", "10", "--jobs", "2"],
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert "## compression\n\nkept" in text and "## language models" in text
    assert text.count("| char_gpt_small |") == 6 and text.count("| char_gru |") == 4
    # The goal is read off the runs, for each int4 file of char_gpt, both ways its words can be read.
    assert "The goal: an int4 char_gpt_small" in text and text.count("- char_gpt_small ") == 3
    goal_lines = [line for line in text.splitlines() if line.startswith("- char_gpt_small ")]
    assert all(": plain reading " in line and ", strict reading " in line for line in goal_lines), goal_lines
