"""The manifest beside each model a run writes into models/: which format and which Keras wrote the file.

    write_manifest(path, "keras", "keras 3.15.1", None)   # writes <file>.json, returns its fields

Each model kind writes its own file (`Source.save`); every one gets this manifest, also in results.json
`models[].file`, so a reader knows which Keras (or framework) reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgepress import files


def write_manifest(path: Path, format: str, keras: str | None, note: str | None) -> dict[str, Any]:
    """Write `<path>.json` with the file's name, format, the Keras that wrote it (None for a graph) and a note."""
    info = {"file": path.name, "format": format, "keras": keras, "note": note}
    files.write_text(path.with_name(path.name + ".json"), json.dumps(info, indent=2) + "\n")
    return info
