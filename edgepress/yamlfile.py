"""Reading a YAML document a user gave (a recipe, a device profile): bounded, and refused with a message.

A recipe or profile is a few kilobytes; a file of megabytes, one that is not UTF-8 text, or one nested
hundreds of levels deep is a mistake (or an attack) and is refused before or while parsing, never a
traceback or a parse that does not end. `yaml.safe_load` builds plain data only (no Python objects).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from edgepress.errors import EdgepressError

MAX_BYTES = 1_000_000
MAX_DEPTH = 50
MAX_VALUES = 100_000


def read_mapping(path: str | Path, what: str) -> dict:
    """The YAML mapping in the file at `path`; `what` names it in messages ("Recipe", "Device profile")."""
    path = Path(path)
    if not path.is_file():
        raise EdgepressError(f"{what} file {path} not found.")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise EdgepressError(f"{what} {path} is {size:,} bytes; a {what.lower()} is at most {MAX_BYTES:,} bytes of "
                             "YAML. Check that you passed the right file.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgepressError(f"{what} {path} is not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}). "
                             "Save it as UTF-8 YAML.") from None
    depth = _flow_depth(text)
    if depth > MAX_DEPTH:
        raise EdgepressError(f"{what} {path} nests {depth} levels deep; at most {MAX_DEPTH} are allowed.")
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader: plain data only)
    except yaml.YAMLError as e:
        raise EdgepressError(f"{what} {path} is not valid YAML: {e}") from None
    except RecursionError:
        raise EdgepressError(f"{what} {path} nests too deeply; at most {MAX_DEPTH} levels are allowed.") from None
    if not isinstance(raw, dict):
        raise EdgepressError(f"{what} {path} must be a YAML mapping (key: value lines), not "
                             f"{'an empty file' if raw is None else type(raw).__name__}.")
    _check_size(raw, what, path)
    return raw


class _StrictLoader(yaml.SafeLoader):
    """safe_load's loader, strict: a key given twice is an error (PyYAML keeps the last silently: `steps` given twice
    ran with no steps), and a value its tag cannot read (`!!int abc`, the date 2026-13-01, a 5,000-digit integer)
    is a YAML error at its line, not a ValueError from deep inside the parser."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                    continue
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except TypeError:  # a list or mapping as a key: PyYAML's own error says so
                    continue
                if key in seen and key != "<<":
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice, at lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1} (YAML would keep only the last); keep one",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, ArithmeticError) as e:
            text = str(node.value)
            shown = repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text):,} characters)"
            reason = "more digits than any setting takes" if "digits" in str(e) else str(e)
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown} cannot be read as {node.tag.rsplit(':', 1)[-1]} ({reason})", node.start_mark
            ) from None


def _flow_depth(text: str) -> int:
    """The deepest nesting of [ and { brackets (outside quotes, roughly): what makes a YAML parser recurse."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _check_size(document, what: str, path: Path) -> None:
    """Refuse a document nested deeper than MAX_DEPTH or holding more than MAX_VALUES values: YAML aliases can
    make a small file stand for billions of values (the "billion laughs"), which validating would walk."""
    count, stack = 0, [(document, 0)]
    while stack:
        value, level = stack.pop()
        count += 1
        if level > MAX_DEPTH:
            raise EdgepressError(f"{what} {path} nests more than {MAX_DEPTH} levels deep, the most allowed.")
        if count > MAX_VALUES:
            raise EdgepressError(f"{what} {path} holds more than {MAX_VALUES:,} values (YAML aliases that repeat "
                                 "themselves?); a recipe or profile is a few hundred.")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, level + 1) for child in children)
