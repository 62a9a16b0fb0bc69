"""`Section`: the base of every schema a user writes by hand (recipe sections, step configs, device profiles).

Strict where a lenient parse would hide a mistake: unknown keys are refused (a typo names the valid keys), a
number must be finite (`.inf`, `.nan` and `1e999`, which reads as infinity, mean nothing as a learning rate or a
limit), and true/false is not a number (pydantic would read `train_epochs: true` as 1).
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        # A model validator, not a field one: a field validator on a step's discriminator (`type`) is not allowed.
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is None:
                continue
            if bool_as_number(value, field.annotation):
                raise ValueError(f"{name}: must be a number, not true/false")
            if _has_nul(value):  # no path, name or command holds one; the C library would cut the string there
                raise ValueError(f"{name}: a text value cannot contain a NUL byte")
        return data


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def bool_as_number(value: Any, annotation: Any) -> bool:
    """True when `value`, or an item of a list or tuple `value`, is true/false where `annotation` wants a number
    and takes no bool."""
    if isinstance(value, bool):
        leaves = _leaves(annotation)
        return bool(leaves & {int, float}) and not leaves & {bool, Any}
    if isinstance(value, list | tuple):
        items = _item_annotations(annotation, len(value))
        return any(bool_as_number(v, a) for v, a in zip(value, items, strict=False))
    return False


def _leaves(annotation: Any) -> set:
    """The plain types `annotation` is made of (through Optional, Union, Annotated and Literal values' types)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if origin is typing.Annotated:
        return _leaves(typing.get_args(annotation)[0])
    if origin is None:
        return {annotation}
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, dict):
        return {origin}
    return set().union(*(_leaves(a) for a in args)) if args else {origin}


def _item_annotations(annotation: Any, count: int) -> list:
    """The annotation of each of `count` items of a list or tuple value of `annotation` (empty if it takes none)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _item_annotations(typing.get_args(annotation)[0], count)
    args = typing.get_args(annotation)
    if origin is list and args:
        return [args[0]] * count
    if origin is tuple and args:
        return [args[0]] * count if len(args) == 2 and args[1] is Ellipsis else list(args)
    if args and origin not in (list, tuple, dict, set):  # a Union: the first list or tuple in it
        for arg in args:
            items = _item_annotations(arg, count)
            if items:
                return items
    return []
