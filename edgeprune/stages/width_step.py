"""Width pruning as a cached planner step: the width methods (methods/width.py, stages/width.py)
applied to a (depth-pruned) HF checkpoint, saved as a standard checkpoint.

Heads go by whole GQA groups (the 'groups' head mode), so a candidate's (heads, kv_heads) is
exactly what the cost model priced; FFN channels are a multiple of 32 (aligned_keep)."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.config.recipe import Calibration
from edgeprune.store import StepStore


def width_fractions(cfg: dict, heads: int | None, kv_heads: int | None, ffn: int | None) -> tuple[float, float]:
    """(fraction of KV groups removed, fraction of FFN channels removed) for the width methods."""
    n_kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_frac = 0.0
    if heads is not None:
        kept_kv = kv_heads or heads // (cfg["num_attention_heads"] // n_kv)
        head_frac = (n_kv - kept_kv) / n_kv
    ffn_frac = 0.0 if ffn is None else 1.0 - ffn / cfg["intermediate_size"]
    return head_frac, ffn_frac


def planned_cut(cfg: dict, heads: int | None, kv_heads: int | None, ffn: int | None):
    """The priced shape as a cut: whole GQA groups (what the cost model priced) and FFN channels."""
    from edgeprune.methods.width import WidthCut, WidthShape

    shape = WidthShape.of(cfg)
    head_frac, ffn_frac = width_fractions(cfg, heads, kv_heads, ffn)
    groups = round(head_frac * shape.n_kv)
    return WidthCut(heads=("groups", groups) if groups else None, ffn_keep=ffn if ffn_frac > 0 else None)


def prune_width_step(store: StepStore, hf_dir: Path, key: str, heads: int | None, kv_heads: int | None,
                     ffn: int | None, calib: Calibration, method: str | None = None) -> tuple[Path, str]:
    """`method`: the recipe's width method (planner/methods.py), or None for the default method of
    each structure in turn (heads, then FFN channels scored on the head-pruned model). Each method
    makes the part of the candidate's cut it covers, with its own scoring and decision."""
    from edgeprune.methods.width import width_methods

    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    specs = width_methods(method)
    cut = planned_cut(cfg, heads, kv_heads, ffn)

    def build(out: Path) -> dict:
        from edgeprune.stages.calib import calibration_windows
        from edgeprune.stages.width import prune_to_cut
        from edgeprune.toolchain.hf import load_model, save_model

        model, tok = load_model(hf_dir)
        windows = calibration_windows(tok, calib)
        info = {}
        for spec in specs:
            part = cut.only(spec.structures)
            if part.heads is not None or part.ffn_keep is not None:
                info[spec.name] = _summary(prune_to_cut(model, windows, spec, part))
        save_model(model, tok, out)
        return {"method": method or "+".join(spec.name for spec in specs), **info}

    step_key = {"model": key, "heads": heads, "kv_heads": kv_heads, "ffn": ffn,
                "calibration": calib.model_dump(mode="json")}
    if not all(spec.default for spec in specs):  # naming a default method runs what None runs: one cache entry
        step_key["method"] = method
    res = store.run("width", step_key, build)
    return res.path, res.path.name


def _summary(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "decision"}
