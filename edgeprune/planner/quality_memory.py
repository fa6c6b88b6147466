"""Perplexity ratios that earlier plans measured on the same model, with the same scoring, pruning,
healing, recovery and quality protocol. A later plan's quality model starts from them instead of
the prior fitted on SmolLM2 (candidates.BETA_PRIOR), so its first pick already reflects how this
model, healed this way, degrades.

The file is read once per run and a copy kept in --out, so a resumed run decides with what the
first attempt knew (as the speed calibration does, store/resume.py); measured candidates are
added to the shared file as they come, one entry per candidate (a re-measurement replaces it).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from edgeprune.atomic import atomic_write_text
from edgeprune.targets.calibration import calibration_dir
from edgeprune.targets.costmodel import Candidate

SNAPSHOT = "quality-memory-start.json"


def memory_key(model_hash: str, recipe) -> dict:
    """What a measured ratio depends on besides the candidate itself (its depth, width and quant type)."""
    dump = lambda part: None if part is None else part.model_dump(mode="json")  # noqa: E731
    return {"model": model_hash, "calibration": dump(recipe.calibration), "depth": dump(recipe.depth),
            "width": dump(recipe.width), "heal": dump(recipe.heal), "recovery": dump(recipe.recovery),
            "quality": dump(recipe.quality), "baseline_quant": recipe.export.quant}


def memory_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    d = calibration_dir() / "quality"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{digest}.json"


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("samples", []))
    except (json.JSONDecodeError, AttributeError):
        return []  # a damaged memory is only a lost head start: the run measures anew


def snapshot(shared: Path, out: Path) -> list[dict]:
    """The samples as the run first found them (copied into `out` on the first attempt)."""
    start = out / SNAPSHOT
    if not start.is_file():
        atomic_write_text(start, json.dumps({"samples": _read(shared)}, indent=1))
    return _read(start)


def candidate_of(sample: dict) -> Candidate:
    return Candidate(layers_removed=sample["layers_removed"], heads=sample.get("heads"), ffn=sample.get("ffn"),
                     quant=sample["quant"], kv_heads=sample.get("kv_heads"))


def remember(shared: Path, key: dict, cand: Candidate, ratio: float) -> None:
    if not math.isfinite(ratio):
        return
    entry = {"layers_removed": cand.layers_removed, "heads": cand.heads, "ffn": cand.ffn, "quant": cand.quant,
             "kv_heads": cand.kv_heads, "ppl_ratio": ratio}
    samples = [s for s in _read(shared) if candidate_of(s) != cand] + [entry]
    atomic_write_text(shared, json.dumps({"key": key, "samples": samples}, indent=1))
