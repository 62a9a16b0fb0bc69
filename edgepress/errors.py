"""The errors edgepress raises on purpose.

`EdgepressError` is bad input or an unmet requirement the user can fix: the CLI prints its message
(one paragraph naming the thing at fault and what to do) and exits with code 2, no traceback.
`GateFailed` means the run worked but its artifacts miss the recipe's gates: exit code 1.
`InternalError` is edgepress's own failure it caught (exit code 70, like any other bug).
"""


class EdgepressError(Exception):
    """Bad input the user can fix; the message names the thing at fault and what to do."""


class Refused(EdgepressError):
    """The plan refused the recipe before anything was written (`edgepress.run`): the same recipe is always
    refused, which is how `edgepress tune` tells a choice the steps cannot take from a trial that failed."""


class GateFailed(Exception):
    """The measured artifacts do not meet the recipe's gates; the message names each failing gate."""


class InternalError(Exception):
    """edgepress failed in work of its own choosing (a remedy it tried, a layer it picked): a bug, never bad input.
    The CLI exits 70 and saves the traceback, which holds the error it was raised from."""


class Hopeless(Exception):
    """A run stopped after its first training epoch: the model scored below the floor it was given."""

    def __init__(self, accuracy: float, floor: float) -> None:
        super().__init__(f"accuracy after one training epoch {accuracy:.2%} is below {floor:.2%}")
        self.accuracy, self.floor = accuracy, floor


def first_line(e: BaseException) -> str:
    """The first line of an exception from deep inside a library, without its final period (callers
    add their own punctuation): enough to name the cause."""
    lines = str(e).strip().splitlines()
    text = lines[0].rstrip(".") if lines else ""
    return text or type(e).__name__
