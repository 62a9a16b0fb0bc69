"""Ctrl-C is never lost (edgepress/interrupt.py): a real SIGINT that a library swallows still ends the run with
exit 130, one line, and a run directory without half-written files.

The signal is sent to this process from inside a weakref callback (where JAX's gc hook received one and Python
printed "Exception ignored ... KeyboardInterrupt", then the run went on to exit 0), at three points of a real run:
while the source model trains, while an artifact is exported, and while the artifacts are measured. The run itself
is real (TensorFlow, LiteRT); only the moment the signal arrives is planted.
"""

from __future__ import annotations

import os
import signal
import time
import weakref
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgepress import interrupt
from edgepress.cli import EXIT_INTERRUPTED, app

runner = CliRunner()

TINY = {
    "name": "tiny",
    "model": {"zoo": "seed_mlp", "train_epochs": 3},
    "data": {"dataset": "digits", "train_size": 200, "test_size": 50, "calibration_samples": 20},
    "exports": [{"format": "tflite", "precision": "fp32"}, {"format": "tflite", "precision": "fp16"}],
    "measure": {"runs": 3, "warmup": 1, "profile": False},
}


def _swallowed_sigint() -> None:
    """SIGINT to this process, handled inside a weakref callback, whose exception Python reports and drops."""

    class Thing:
        pass

    thing = Thing()

    def callback(ref) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(200):  # the signal's handler runs here, inside the callback
            time.sleep(0.005)

    ref = weakref.ref(thing, callback)
    del thing  # the callback runs now; its KeyboardInterrupt goes to sys.unraisablehook, not to the caller
    assert ref() is None


def _planted(original):
    def wrapper(*args, **kwargs):
        _swallowed_sigint()
        return original(*args, **kwargs)

    return wrapper


def _point(name: str, monkeypatch) -> None:
    import edgepress.api
    import edgepress.deploy.registry
    import edgepress.models.training

    if name == "training":
        monkeypatch.setattr(edgepress.models.training, "fit", _planted(edgepress.models.training.fit))
    elif name == "export":
        monkeypatch.setattr(edgepress.deploy.registry, "export", _planted(edgepress.deploy.registry.export))
    else:
        monkeypatch.setattr(edgepress.api, "_measure", _planted(edgepress.api._measure))


@pytest.mark.parametrize("point", ["training", "export", "measurement"])
def test_a_ctrl_c_a_library_swallows_still_ends_the_run_with_exit_130(point, tmp_path, monkeypatch):
    _point(point, monkeypatch)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(recipe), "-o", str(out)])
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "interrupted (Ctrl-C)" in result.output
    assert "Exception ignored" not in result.output and "Traceback" not in result.output
    assert not (out / "results.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    if point == "measurement":  # stopped after the exports, which are whole
        assert sorted(p.name for p in (out / "artifacts").glob("*.tflite")) == ["tiny_fp16.tflite",
                                                                                 "tiny_fp32.tflite"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the CLI's handler is gone after it


def test_outside_the_cli_a_ctrl_c_is_python_s_own():
    assert not interrupt.requested()
    interrupt.check()  # nothing recorded: no effect
    with pytest.raises(KeyboardInterrupt), interrupt.catching():
        _swallowed_sigint()
        assert interrupt.requested()
        interrupt.check()
    assert not interrupt.requested()


def test_an_interrupt_turned_into_a_library_error_is_still_an_interrupt(tmp_path, monkeypatch):
    import edgepress.api

    def converting(*args, **kwargs):
        try:
            _swallowed_sigint()
            interrupt.check()
        except KeyboardInterrupt as e:  # as a library that wraps every exception would
            raise RuntimeError("the library's own error") from e

    monkeypatch.setattr(edgepress.api, "_measure", converting)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    result = runner.invoke(app, ["run", str(recipe), "-o", str(tmp_path / "run")])
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "internal error" not in result.output and not list(Path(tmp_path / "run").glob("edgepress-error-*"))
