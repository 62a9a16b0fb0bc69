"""Bounds on what one input file may make edgepress read or allocate, checked before it is read.

    regular_file(path, "the SavedModel graph", MAX_GRAPH_BYTES)  # a regular file (not a FIFO, a device, a symlink
                                                                  # to /dev/zero) no larger than the limit
    zip_member(archive, "config.json", path, MAX_CONFIG_BYTES)    # a member's declared size, checked before inflating
    check_array(shape, dtype, "x", path)                          # a header's declared array, before allocating it
    invoke_limit_s()                                              # how long one call of a model may take
    with memory_cap("The model file m.onnx"): ...                 # what loading it (or one call) may allocate

A file given as a model or data is data, and a few bytes of it must not make edgepress wait forever (a FIFO),
read without end (/dev/zero) or allocate gigabytes (a zip member that inflates to 2.5 GB, an idx or npy header
declaring terabytes). The limits are far above what edgepress's models and data need.

What a load allocates is bounded too, not only what a header declares: a few kilobytes of ONNX can ask for a 4 GB
tensor (a ConstantOfShape, folded when the session is made or run at the first call), a few kilobytes of Keras
config for a layer of billions of weights. `memory_cap` sets RLIMIT_DATA (private writable memory: what malloc and
numpy take) to what the process uses now plus the limit, for the duration of the load, so the allocation past it
fails at once in the library that makes it, and the failure becomes an EdgepressError naming the file. It counts
from what is already mapped, so TensorFlow's large reservations made at import do not count against it.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgepress.errors import EdgepressError, first_line

GiB = 1 << 30
MAX_GRAPH_BYTES = 2 * GiB  # protobuf's own limit for one message (a SavedModel graph, an .onnx file)
MAX_MODEL_BYTES = 64 * GiB  # a model file: the check that matters is that it is a regular file
MAX_CONFIG_BYTES = 64 << 20  # a model's JSON config or metadata: kilobytes for any real model
MAX_ARRAY_BYTES = 2 * GiB  # one data array, as float32 samples (the full MNIST is 0.2 GB)
MAX_DATA_FILE_BYTES = 8 * GiB  # a data file (.npz) holding such arrays
# How long one call of a model may take in edgepress's own process (the plan's and the export checks' calls of an
# ONNX model or an exported file) before it is stopped and reported: far above what a model edgepress serves needs.
# The on-device runner has its own default (runner.INVOKE_LIMIT_S, 300 s: a slow device); EDGEPRESS_INVOKE_LIMIT_S
# sets another for both.
INVOKE_LIMIT_S = 60.0
# What loading one model file, or one call of a model in edgepress's own process, may allocate: far above any model
# edgepress serves (their weights are megabytes). EDGEPRESS_MAX_LOAD_MB sets another.
MAX_LOAD_BYTES = 16 * GiB


def regular_file(path: str | os.PathLike, what: str, limit: int) -> int:
    """The size of the regular file at `path` (symlinks followed), refused when it is not one or is too large."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as e:
        raise EdgepressError(f"{what} {path} cannot be read ({e.strerror or e}).") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a device" if
                stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket" if
                stat.S_ISSOCK(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file")
        target = f" (it points to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise EdgepressError(f"{what} {path} is {kind}{target}, not a regular file: edgepress reads model and data "
                             "files only. Pass the file itself.")
    if info.st_size > limit:
        raise EdgepressError(f"{what} {path} has {info.st_size:,} bytes, more than edgepress reads ({limit:,}). "
                             "Pass a smaller file.")
    return info.st_size


def zip_member(archive: zipfile.ZipFile, name: str, path: str | os.PathLike, limit: int) -> bytes:
    """The member `name` of `archive` (the file at `path`), its uncompressed size checked before it is inflated."""
    info = archive.getinfo(name)  # KeyError for a missing member: the caller says what the file lacks
    if info.file_size > limit:
        raise EdgepressError(
            f"{path}: its entry {name} inflates to {info.file_size:,} bytes, more than edgepress reads for it "
            f"({limit:,}). The file is not a model or data file edgepress wrote or reads; pass another."
        )
    with archive.open(info) as member:
        data = member.read(limit + 1)  # the declared size may lie: read no more than the limit either way
    if len(data) > limit:
        raise EdgepressError(f"{path}: its entry {name} inflates to more than {limit:,} bytes; pass another file.")
    return data


def check_array(shape: Sequence[int], dtype: np.dtype | str, what: str, limit: int = MAX_ARRAY_BYTES) -> None:
    """Refuse an array a header declares (`shape`, `dtype`) before allocating it, when it would be too large: counted
    as float32 samples, what edgepress turns data into."""
    values = 1
    for d in shape:
        values *= int(d)
    size = values * max(np.dtype(dtype).itemsize, 4)
    if size > limit:
        raise EdgepressError(
            f"{what} declares an array of shape {tuple(int(d) for d in shape)} ({size / GiB:,.1f} GiB as float32), "
            f"more than edgepress loads ({limit / GiB:.0f} GiB). Give a smaller sample of the data."
        )


def invoke_limit_s() -> float:
    """The limit on one call of a model in edgepress's own process, in seconds: EDGEPRESS_INVOKE_LIMIT_S or
    INVOKE_LIMIT_S."""
    try:
        return max(0.1, float(os.environ.get("EDGEPRESS_INVOKE_LIMIT_S", INVOKE_LIMIT_S)))
    except ValueError:
        return INVOKE_LIMIT_S


def load_memory_limit() -> int:
    """What one load may allocate, in bytes: EDGEPRESS_MAX_LOAD_MB or MAX_LOAD_BYTES."""
    try:
        return max(1 << 20, int(float(os.environ.get("EDGEPRESS_MAX_LOAD_MB", MAX_LOAD_BYTES >> 20)) * (1 << 20)))
    except ValueError:
        return MAX_LOAD_BYTES


_capped = False  # a cap is in force (an inner one would only measure from a higher start)
# What an allocation that failed says, in the exceptions of numpy, onnxruntime, TensorFlow, torch and protobuf.
_OUT_OF_MEMORY = re.compile(r"\balloc|bad_alloc|out of memory|\bmemory\b|ResourceExhausted|\bOOM\b", re.IGNORECASE)


@contextmanager
def memory_cap(what: str, limit: int | None = None) -> Iterator[None]:
    """While the block runs, the process may allocate at most `limit` more bytes (default `load_memory_limit()`) of
    private writable memory; an allocation past it fails, and the failure is raised as an EdgepressError naming
    `what` (e.g. "The model file m.onnx"). A no-op where RLIMIT_DATA does not exist, and inside another cap."""
    global _capped
    try:
        import resource
    except ImportError:  # Windows: no rlimits
        yield
        return
    used = _data_bytes()
    if _capped or used is None:
        yield
        return
    limit = load_memory_limit() if limit is None else limit
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = used + limit if hard == resource.RLIM_INFINITY else min(used + limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:  # a lower limit is already in force (the user's): keep it
        yield
        return
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    _capped = True
    try:
        yield
    except Exception as e:
        if isinstance(e, MemoryError) or _OUT_OF_MEMORY.search(str(e)):
            raise EdgepressError(
                f"{what} needs more memory than edgepress lets one model load or call allocate ({limit >> 20:,} "
                f"MiB; EDGEPRESS_MAX_LOAD_MB sets another): {first_line(e)}. A model edgepress serves needs far "
                "less; pass another file."
            ) from None
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        _capped = False


def _data_bytes() -> int | None:
    """The process's private writable memory now (VmData: what RLIMIT_DATA counts), or None where it is unknown."""
    try:
        with open("/proc/self/status") as status:
            found = re.search(r"^VmData:\s+(\d+) kB", status.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None
