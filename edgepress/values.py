"""Values users write by hand in recipes and on the command line, read in one place."""

from __future__ import annotations

# Epochs past which a value can only be a mistake (a typo that would train for days): every epochs field's bound.
MAX_EPOCHS = 10_000
# A batch past which a value can only be a mistake (an export of a billion-sample batch, a training batch no memory
# holds).
MAX_BATCH = 65_536
# Timed runs and threads past which a value can only be a mistake (a run that would not end, a thread pool no
# machine has): the bound of every runs, warmup and threads option, on the command line and in recipes.
MAX_RUNS = 100_000
MAX_THREADS = 1024
# A learning rate past which training can only diverge (1e300 trained to NaN weights, exit 0).
MAX_LEARNING_RATE = 10.0


def fraction(value):
    """A fraction given as a number (0.01) or a percentage string ('1%'); anything else is refused, saying why."""
    import re

    given = value
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise ValueError("must be a number such as 0.01 or a percentage such as '1%', not true/false")
        return value
    if isinstance(value, str):
        text = value.strip()
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)(%?)", text)
        if not match:
            raise ValueError(f"'{value}' is not a number such as 0.01 or a percentage such as '1%' (no space before %)")
        value = float(match.group(1)) / (100 if match.group(2) else 1)
    elif not isinstance(value, int | float):
        raise ValueError(f"must be a number such as 0.01 or a percentage such as '1%', not a {type(value).__name__}")
    if not 0 <= float(value) <= 1:
        raise ValueError(f"must be between 0 and 1 (or 0% and 100%), got {given!r}")
    return float(value)


def plain_path(value: str | None) -> str | None:
    """A file path as given, refused when no file system takes it (a NUL byte, a name part over 255 bytes)."""
    if value is None:
        return value
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL byte")
    if any(len(part.encode()) > 255 for part in value.split("/")):
        raise ValueError("a path part (folder or file name) is at most 255 bytes")
    return value


def plain_name(value: str) -> str:
    """A name that becomes one part of a path (a target's label, a device's name: best-<name>.yaml, report folders):
    refused when it could point elsewhere ('/', '\\', '..', a NUL byte) or is no name at all."""
    if not value.strip() or value in (".", "..") or any(c in value for c in "/\\\0") or len(value.encode()) > 200:
        raise ValueError(f"{value!r} is not a plain name: a name becomes part of a file name, so it may not be "
                         "empty, '.' or '..', or contain '/', '\\' or a NUL byte (at most 200 bytes)")
    return value
