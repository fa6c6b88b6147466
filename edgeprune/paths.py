"""Where built-in YAMLs and the shared data folder live."""

from __future__ import annotations

import os
from pathlib import Path

from edgeprune.errors import DataError

_PKG = Path(__file__).resolve().parent


def repo_dir(name: str) -> Path:
    """Built-in `targets/` or `recipes/`: next to the package in a checkout, else bundled."""
    for candidate in (_PKG.parent / name, _PKG / "builtin" / name):
        if candidate.is_dir():
            return candidate
    return _PKG.parent / name


def data_dir() -> Path:
    """The shared evaluation/calibration data: $EDGEPRUNE_DATA, else ../shared/data of the checkout."""
    env = os.environ.get("EDGEPRUNE_DATA")
    candidates = [Path(env)] if env else []
    candidates += [_PKG.parent.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    raise DataError(
        "shared data folder not found",
        where=str(candidates[0]),
        fix="set EDGEPRUNE_DATA to the folder holding wiki.test.raw and c4_en_2k.*.jsonl, or pass --calib/--eval-text",
    )


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGEPRUNE_CACHE", Path.home() / ".cache" / "edgeprune"))
    root.mkdir(parents=True, exist_ok=True)
    return root
