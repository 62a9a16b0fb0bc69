"""Atomic file writes, and run directories.

Everything edgepress writes goes to a temporary name and is renamed, so a run that is killed or fails midway
never leaves a half-written artifact or report; the next run into that directory removes the temporaries it
left (`prepare_run_dir`) and moves an earlier run's files aside.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    Works for files and directories (a SavedModel). On failure the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: Keras and the converters pick the file format from it.
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically and return the path."""
    return write_bytes(path, text.encode("utf-8"))


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """`path`, checked before any work to be a file edgepress can write (an option such as --json or --junit);
    EdgepressError naming `what` otherwise: a folder, a special file, a place under /proc, /sys or /dev, or a
    folder that cannot be made or written."""
    from edgepress.errors import EdgepressError

    path = Path(path)
    if "\0" in str(path):
        raise EdgepressError(f"{what} {str(path)!r} contains a NUL byte; give a file path.")
    if path.is_dir():
        raise EdgepressError(f"{what} {path} is a folder; give a file path, e.g. {path / 'results.json'}.")
    if path.exists() and not path.is_file():
        raise EdgepressError(f"{what} {path} is not a regular file (a device, a pipe?); give a file path.")
    resolved = path.resolve()
    if resolved.parts[1:2] and resolved.parts[1] in ("proc", "sys", "dev"):
        raise EdgepressError(f"{what} {path} is under /{resolved.parts[1]}, which holds no files to write; give a "
                             "file path in a folder of yours.")
    existing = next(p for p in (path.parent.absolute(), *path.parent.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise EdgepressError(f"{what} {path} cannot be written: {existing} is not a folder you can write to.")
    return path


# -- run directories ----------------------------------------------------------------------------------

# The name atomic_path gives its temporaries: what a killed run leaves behind.
_LEFTOVER = re.compile(r"\..+\.tmp-[0-9a-f]{8}.*")
# Written into every run directory: a re-run recognises an earlier run by it (and never mistakes a user's folder
# for one). Older runs, made before it existed, are recognised by their results.json.
RUN_MARKER = ".edgepress-run"
PREVIOUS = "previous"

_run_dir: Path | None = None  # the run directory this process writes, for the CLI's error report


def clean_leftovers(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed run left in `run_dir` (any depth); return what was removed.

    Only names atomic_path makes (`.<stem>.tmp-<8 hex><suffix>`) are touched: a run writing into the same
    directory at the same moment would lose its temporaries, so two runs must not share one directory.
    """
    removed = []
    for path in sorted(Path(run_dir).rglob(".*.tmp-*"), key=lambda p: len(p.parts), reverse=True):
        if not _LEFTOVER.fullmatch(path.name) or not path.exists():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if `path` holds a run edgepress made (finished, or killed midway)."""
    path = Path(path)
    if (path / RUN_MARKER).is_file():
        return True
    try:
        return "edgepress_version" in json.loads((path / "results.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def real_dir_inside(root: str | os.PathLike, path: str | os.PathLike, what: str) -> Path:
    """`path`, checked to be a real folder inside `root` when it exists (not a symlink, not a file, not leading
    out of `root`): edgepress moves files into it. EdgepressError naming `what` otherwise."""
    from edgepress.errors import EdgepressError

    root, path = Path(root), Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise EdgepressError(f"{path} ({what}) is {kind}, not a folder: edgepress moves files into it and keeps "
                             f"them inside {root}. Move it away (or remove it) and run again.")
    if path.exists() and not path.resolve().is_relative_to(root.resolve()):
        raise EdgepressError(f"{path} ({what}) leads outside {root}; move it away and run again.")
    return path


def remove_inside(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Remove `path` (a file or a folder tree) if it is inside `root`; a symlink is removed, never followed."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    elif path.is_dir() and path.resolve().is_relative_to(Path(root).resolve()):
        shutil.rmtree(path)
    elif path.is_file():
        path.unlink()


def check_run_dir(run_dir: str | os.PathLike) -> None:
    """Refuse a folder of other files as a run directory (EdgepressError): a run would mix its files with them and
    replace any named like its own. New, empty (hidden files aside) or holding an earlier run: fine
    (prepare_run_dir moves that run aside, into previous/, which must be a real folder inside it). Whether the
    path can be made and written is plan.py's check."""
    from edgepress.errors import EdgepressError

    path = Path(run_dir)
    if not path.is_dir():
        return
    if is_run_dir(path):
        real_dir_inside(path, path / PREVIOUS, "where an earlier run is moved")
        return
    others = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise EdgepressError(f"The run directory {path} already holds other files ({shown}) and no edgepress run: "
                             "give -o a new or empty folder.")


def prepare_run_dir(run_dir: str | os.PathLike) -> Path | None:
    """Make `run_dir` ready for a new run; return where an earlier run in it was moved, or None.

    Removes a killed run's temporaries, then moves an earlier run's files (everything but hidden files and
    previous/) into previous/<when it started>/, so the directory holds one run's files only, and none is lost.
    Records `run_dir` as this process's run directory (`current_run_dir`). Refuses what check_run_dir refuses.
    Call it once the plan has checked the path (edgepress.plan).
    """
    global _run_dir
    check_run_dir(run_dir)
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    moved = _move_earlier_run(path) if is_run_dir(path) else None
    write_text(path / RUN_MARKER, json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    _run_dir = path
    return moved


def current_run_dir() -> Path | None:
    """The run directory this process last prepared (None before any run)."""
    return _run_dir


def _move_earlier_run(path: Path) -> Path | None:
    entries = [p for p in path.iterdir() if not p.name.startswith(".") and p.name != PREVIOUS]
    marker = path / RUN_MARKER
    if not entries:  # a run killed before it wrote anything
        return None
    started = (marker if marker.exists() else path / "results.json").stat().st_mtime
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    previous = real_dir_inside(path, path / PREVIOUS, "where an earlier run is moved")
    target = previous / stamp
    n = 1
    while target.exists() or target.is_symlink():
        n += 1
        target = previous / f"{stamp}-{n}"
    target.mkdir(parents=True)
    for entry in entries:
        os.replace(entry, target / entry.name)
    if marker.exists():  # last: a move cut short is finished by the next run, which still sees a run here
        os.replace(marker, target / RUN_MARKER)
    return target
