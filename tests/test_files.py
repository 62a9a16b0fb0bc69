"""Run directories: a killed run's temporaries are removed, an earlier run is moved aside whole, and a directory a
run cannot use is refused before any work. (Real kills: tests/test_kill.py.)"""

import json

import pytest

from edgepress import files
from edgepress.errors import EdgepressError


def _earlier_run(folder, with_marker: bool = True):
    """The files a run leaves, written the way a run writes them."""
    with files.atomic_path(folder / "models" / "0-source.keras") as tmp:
        tmp.write_bytes(b"model")
    files.write_text(folder / "recipe.yaml", "name: old\n")
    files.write_text(folder / "artifacts" / "old_fp32.tflite.json", "{}\n")
    files.write_bytes(folder / "artifacts" / "old_fp32.tflite", b"tflite")
    files.write_text(folder / "results.json", json.dumps({"edgepress_version": "0.1.0", "artifacts": []}))
    if with_marker:
        files.write_text(folder / files.RUN_MARKER, "{}\n")


def test_clean_leftovers_removes_only_atomic_path_temporaries(tmp_path):
    (tmp_path / "artifacts").mkdir()
    leftovers = [tmp_path / "artifacts" / ".m_fp32.tmp-0123abcd.onnx", tmp_path / ".results.tmp-89abcdef.json"]
    for path in leftovers:
        path.write_bytes(b"half")
    saved_model = tmp_path / "models" / ".0-source.tmp-deadbeef"  # a SavedModel directory being written
    (saved_model / "variables").mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"half")
    kept = [tmp_path / ".gitignore", tmp_path / "notes.tmp-0123abcd.txt", tmp_path / ".x.tmp-notahex.json",
            tmp_path / "artifacts" / "m_fp32.onnx"]
    for path in kept:
        path.write_bytes(b"keep")

    removed = files.clean_leftovers(tmp_path)

    assert sorted(removed) == sorted([*leftovers, saved_model])
    assert not any(p.exists() for p in [*leftovers, saved_model]) and all(p.exists() for p in kept)


def test_prepare_moves_an_earlier_run_aside_and_cleans_its_leftovers(tmp_path):
    run = tmp_path / "run"
    _earlier_run(run)
    (run / "artifacts" / ".new_fp32.tmp-0123abcd.tflite").write_bytes(b"half")  # a killed run's temporary
    (run / ".git").mkdir()  # hidden entries are not the run's

    moved = files.prepare_run_dir(run)

    assert moved is not None and moved.parent == run / files.PREVIOUS
    assert sorted(p.name for p in run.iterdir()) == sorted([".git", files.PREVIOUS, files.RUN_MARKER])
    assert (moved / "artifacts" / "old_fp32.tflite").read_bytes() == b"tflite"
    assert (moved / "models" / "0-source.keras").read_bytes() == b"model" and (moved / files.RUN_MARKER).exists()
    assert not list(run.rglob("*.tmp-*"))
    assert files.current_run_dir() == run

    _earlier_run(run)  # a second re-run keeps both earlier runs
    again = files.prepare_run_dir(run)
    assert again != moved and sorted((run / files.PREVIOUS).iterdir()) == sorted([moved, again])


def test_prepare_recognises_a_run_made_before_the_marker(tmp_path):
    _earlier_run(tmp_path / "run", with_marker=False)
    moved = files.prepare_run_dir(tmp_path / "run")
    assert moved is not None and (moved / "results.json").exists()


def test_prepare_a_new_or_empty_directory_moves_nothing(tmp_path):
    assert files.prepare_run_dir(tmp_path / "new" / "run") is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".keep").write_text("")
    assert files.prepare_run_dir(tmp_path / "empty") is None
    assert (tmp_path / "empty" / files.RUN_MARKER).is_file()


def test_a_folder_of_other_files_is_refused_before_any_work(tmp_path):
    import edgepress
    from edgepress.plan import make_plan

    (tmp_path / "mine.txt").write_text("mine")
    (tmp_path / "model.keras").write_text("mine")
    recipe = edgepress.Recipe.from_dict({"model": {"zoo": "seed_mlp"}, "data": {"dataset": "digits"}})
    for refuse in (files.prepare_run_dir, lambda path: make_plan(recipe, path)):
        with pytest.raises(EdgepressError, match=r"already holds other files \(mine.txt, model.keras\) and no "
                                                 "edgepress run"):
            refuse(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "model.keras"]  # untouched
