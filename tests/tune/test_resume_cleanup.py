"""A resumed tune leaves no trace of a killed one: the interrupted trial's half-done folder (its models, artifacts
and their temporaries) is removed when the trial is asked again, and every temporary in the run directory goes.

Deterministic beside test_cli_tune.py's kill -9 test (whose kill lands wherever the trial happens to be): a real
Optuna study with a trial left RUNNING, and the files a kill leaves, made by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import optuna

from edgepress import files
from edgepress.api import Progress
from edgepress.tune.study import _check_tune_dir, _Loop


def test_the_interrupted_trials_folder_and_every_temporary_are_removed(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", directions=["maximize", "minimize"])
    finished = study.ask({"ratio": optuna.distributions.FloatDistribution(0, 0.9)})
    study.tell(finished, [0.9, 1.0])
    killed = study.ask({"ratio": optuna.distributions.FloatDistribution(0, 0.9)})  # left RUNNING by a kill -9
    done_dir, killed_dir = tmp_path / "trials" / "t000", tmp_path / "trials" / "t001"
    (done_dir / "artifacts").mkdir(parents=True)
    (done_dir / "results.json").write_text("{}")
    (killed_dir / "models").mkdir(parents=True)
    (killed_dir / "models" / ".0-source.tmp-0123abcd.keras").write_bytes(b"half")
    (tmp_path / ".tune.tmp-89abcdef.json").write_text("{")
    (done_dir / "artifacts" / ".t000_int8.tmp-deadbeef.tflite").write_bytes(b"half")

    _check_tune_dir(tmp_path)  # a tune's folder: resumed, not refused
    files.clean_leftovers(tmp_path)
    _Loop._requeue_interrupted(SimpleNamespace(study=study, run_dir=tmp_path, progress=Progress()))

    assert not killed_dir.exists()
    assert (done_dir / "results.json").is_file()  # a finished trial's folder stays
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    trial = study.trials[killed.number]
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["interrupted"]
    assert study.trials[-1].state == optuna.trial.TrialState.WAITING  # asked again
