"""Where built-in YAMLs, the shipped texts and the larger data sets live."""

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


def builtin_data(name: str) -> Path:
    """A text shipped inside the package (edgeprune/builtin/data, see its README for sources and licences)."""
    return _PKG / "builtin" / "data" / name


def data_dir(flag: str = "--data-dir") -> Path:
    """The larger evaluation/training sets (ARC, MMLU, Dolly, ...), which do not ship with the package:
    $EDGEPRUNE_DATA, else a `shared/data` folder beside the checkout. `flag` is the option of the
    command at hand that points at the files instead, named in the error."""
    env = os.environ.get("EDGEPRUNE_DATA")
    candidates = [Path(env)] if env else []
    candidates += [_PKG.parent.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    raise DataError(
        "evaluation data folder not found (only the calibration and WikiText-2 texts ship with edgeprune)",
        where=f"$EDGEPRUNE_DATA ({env})" if env else "$EDGEPRUNE_DATA (unset)",
        fix=f"pass {flag} or set EDGEPRUNE_DATA to a folder laid out as described in README (Data)",
    )


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGEPRUNE_CACHE", Path.home() / ".cache" / "edgeprune"))
    root.mkdir(parents=True, exist_ok=True)
    return root
