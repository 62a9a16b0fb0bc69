"""Ctrl-C that is never lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be. Inside a library's weakref or
gc callback (JAX and TensorFlow register them), that exception is "ignored": printed as "Exception ignored in ..."
and dropped, and the run went on to exit 0. `catching()` (the CLI's boundary) installs a handler that records the
interrupt before raising, so the run stops at its next safe point (`check`: each progress message, which comes at
each epoch, step, export and measurement) or, at the latest, when the work returns.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = False


def requested() -> bool:
    """True when a SIGINT arrived while `catching()` was active."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt if a SIGINT arrived (possibly swallowed by a library callback) since `catching()`
    began. A no-op outside `catching()`."""
    if _requested:
        raise KeyboardInterrupt


def _on_sigint(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _quiet_unraisable(previous):
    """An unraisablehook that drops the KeyboardInterrupt our handler raised inside a callback (it is recorded and
    acted on at the next safe point) and passes everything else on."""
    def hook(unraisable) -> None:
        if _requested and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        previous(unraisable)

    return hook


@contextmanager
def catching() -> Iterator[None]:
    """Record SIGINT (and raise KeyboardInterrupt) while the block runs; restore the previous handlers after.
    Outside the main thread (where signals cannot be handled) the block runs unchanged."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = False
    previous_handler = signal.signal(signal.SIGINT, _on_sigint)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable(previous_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        sys.unraisablehook = previous_hook
        _requested = False
