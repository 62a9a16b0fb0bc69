"""Issue 24's first done-when through the SSH runner: `edgepress run` on recipes/python_char_gpt.yaml at CI size
(tests/test_lm_run.py's `ci_sized`) with two targets, this machine and this machine behind a real SSH server on
127.0.0.1 (tests/deploy/conftest.py): every artifact comes back from the SSH device with its perplexity, time to
first token, decode tokens/s and memory, from a runner that loaded no TensorFlow and no torch."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("litert_torch")

from edgepress.cli import app  # noqa: E402
from tests.test_lm_run import ci_sized  # noqa: E402

cli = CliRunner()


def test_the_char_gpt_recipe_is_measured_here_and_over_ssh(tmp_path, loopback_ssh):
    recipe = ci_sized(tmp_path)
    recipe["targets"] = ["x86-host", {"name": "x86-host", "label": "loopback-ssh", "reach": loopback_ssh.reach}]
    path = tmp_path / "gpt.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli.invoke(app, ["run", str(path), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["devices"]["loopback-ssh"]["reach"] == "ssh" and results["devices"]["loopback-ssh"]["error"] is None
    rows = {(a["device"], a["format"], a["precision"]): a for a in results["artifacts"]}
    made = {(f, p) for _, f, p in rows}
    assert made and made == {(e["format"], e["precision"]) for e in recipe["exports"]}
    for fmt, precision in made:
        here, there = rows["x86-host", fmt, precision], rows["loopback-ssh", fmt, precision]
        assert there.get("error") is None, there.get("error")
        # The same file through the same runtime: the same perplexity and greedy continuation, wherever it ran.
        assert there["metrics"]["perplexity"] == pytest.approx(here["metrics"]["perplexity"], rel=1e-6)
        assert 1 < there["metrics"]["perplexity"] < 100
        lm = there["lm"]
        assert lm["ttft_ms"]["p50"] > 0 and lm["decode_tokens_per_s"]["p50"] > 0
        low, high = lm["decode_tokens_per_s"]["p50_ci"]
        assert low <= lm["decode_tokens_per_s"]["p50"] <= high
        assert there["memory"]["peak_rss_bytes"] > 0
        assert set(there["gates"]) == {"max_perplexity", "min_decode_tokens_per_s", "max_ttft_ms", "max_memory_mb"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "loopback-ssh" in report and "decode tokens/s" in report
    # Every runner the SSH device ran (tests/deploy/runner_watch.py logs each) loaded no TensorFlow, Keras or torch.
    runs = loopback_ssh.runs()
    assert runs and all(run["loaded"] == [] for run in runs), runs
