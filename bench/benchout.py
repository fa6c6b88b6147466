"""Writing a bench script's result: bench/out/... JSON, atomically (a killed run leaves the old file)."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.atomic import atomic_write_text


def write_json(path: Path | None, data: dict) -> None:
    """`data` as indented JSON at `path` (folders made); nothing when no --out was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1))
