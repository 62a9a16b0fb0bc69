"""How many channels or heads a structured-pruning step removes from a layer: the ratio it is given and the rounding
of what it keeps (shared by the Keras and the PyTorch program structured_prune)."""

from __future__ import annotations

import math
from typing import Any

from edgepress.errors import EdgepressError


def rounded(channels: int, count: int, multiple: int | None, unit: int = 1) -> int:
    """How many of `channels` to remove so that the width kept (channels x `unit`, the size of an attention head)
    is a multiple of `multiple`: the kept number is rounded up, never below `multiple` and never above `channels`
    (a layer with fewer keeps them all)."""
    if not multiple or count == 0:
        return count
    multiple //= math.gcd(multiple, unit)  # in atoms: a head of 8 columns fills 8 of them at once
    keep = max(multiple, math.ceil((channels - count) / multiple) * multiple)
    return channels - min(channels, keep)


def group_ratio(names: list[str], config: Any) -> float:
    """The ratio of layers pruned together (`config`: a StructuredPruneConfig): the one given for them by name, else
    the step's `ratio`."""
    given = {n: config.layers[n] for n in names if config.layers and n in config.layers}
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{n}: {r:g}" for n, r in given.items())
        raise EdgepressError(
            f"structured_prune: layers {', '.join(names)} share their channels (tied by Add or Concatenate), "
            f"so they are pruned together and need one ratio; `layers` gives {listed}. Give them the same ratio."
        )
    return next(iter(given.values())) if given else config.ratio
