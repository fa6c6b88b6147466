"""Resumable training state, written atomically: a killed run leaves either the previous
checkpoint or the new one, never half of one.

Layout: OUT/checkpoint/state.pt holds the adapter tensors, optimizer state, step, elapsed
seconds, early-stopping bookkeeping and every RNG state; OUT/checkpoint/best.pt holds the
adapter with the best validation perplexity so far.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from edgeprune.errors import ConfigError

NAME = "checkpoint"


def rng_state() -> dict:
    # numpy's state as a tensor + plain scalars, so the checkpoint loads with weights_only=True
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def save(out: Path, state: dict, best: dict | None) -> Path:
    """Write into a temp dir, then swap it in with renames (atomic on one filesystem)."""
    final = Path(out) / NAME
    tmp = Path(out) / f".{NAME}.tmp{os.getpid()}"
    old = Path(out) / f".{NAME}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    if best is not None:
        torch.save(best, tmp / "best.pt")
    elif (final / "best.pt").is_file():
        shutil.copy2(final / "best.pt", tmp / "best.pt")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load(out: Path, fingerprint: str) -> tuple[dict, dict | None] | None:
    """(state, best) of the last checkpoint in `out`, or None; a checkpoint made by another
    recipe is refused rather than silently mixed."""
    final = Path(out) / NAME
    if not (final / "state.pt").is_file():
        old = Path(out) / f".{NAME}.old"  # killed between the two renames
        final = old if (old / "state.pt").is_file() else None
    if final is None:
        return None
    state = torch.load(final / "state.pt", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        raise ConfigError("the checkpoint here was made with a different model, data or recipe",
                          where=str(final), fix="use a new --out, or pass --fresh to discard it")
    best = torch.load(final / "best.pt", weights_only=True) if (final / "best.pt").is_file() else None
    return state, best


def discard(out: Path) -> None:
    for name in (NAME, f".{NAME}.old"):
        shutil.rmtree(Path(out) / name, ignore_errors=True)
