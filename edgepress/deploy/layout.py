"""Image layouts: a PyTorch model takes NCHW images, a TFLite user expects NHWC; an artifact records which it takes.

    x_artifact = to_layout(x, "NCHW", "NHWC")   # the same images, channels moved last
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LAYOUTS = ("NCHW", "NHWC")


def to_layout(x: np.ndarray, source: str | None, target: str | None) -> np.ndarray:
    """Images `x` in the `source` layout, moved to the `target` layout (NCHW <-> NHWC); others as they are."""
    change = layout_change(source, target)
    if change is None or x.ndim != 4:
        return x
    return np.ascontiguousarray(x.transpose(change))


def layout_change(source: str | None, target: str | None) -> tuple[int, ...] | None:
    """The axes permutation from `source` to `target` layout, or None when there is nothing to move."""
    if source is None or target is None or source == target:
        return None
    return (0, 2, 3, 1) if (source, target) == ("NCHW", "NHWC") else (0, 3, 1, 2)


def in_layout(sample_shape: Sequence[int | None], change: tuple[int, ...] | None) -> tuple[int, ...]:
    """One sample's shape after `change` (a `layout_change`)."""
    shape = (1, *sample_shape)
    if change is not None:
        shape = tuple(shape[i] for i in change)
    return tuple(int(d) for d in shape[1:])
