"""Width pruning as a cached planner step: the width methods (methods/width.py, stages/width.py)
applied to a (depth-pruned) HF checkpoint, saved as a standard checkpoint.

Heads go by whole GQA groups (the 'groups' head mode), so a candidate's (heads, kv_heads) is
exactly what the cost model priced; FFN channels are a multiple of 32 (aligned_keep)."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.config.recipe import Calibration
from edgeprune.runner import StepStore


def width_fractions(cfg: dict, heads: int | None, kv_heads: int | None, ffn: int | None) -> tuple[float, float]:
    """(fraction of KV groups removed, fraction of FFN channels removed) for the width methods."""
    n_kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_frac = 0.0
    if heads is not None:
        kept_kv = kv_heads or heads // (cfg["num_attention_heads"] // n_kv)
        head_frac = (n_kv - kept_kv) / n_kv
    ffn_frac = 0.0 if ffn is None else 1.0 - ffn / cfg["intermediate_size"]
    return head_frac, ffn_frac


def prune_width_step(store: StepStore, hf_dir: Path, key: str, heads: int | None, kv_heads: int | None,
                     ffn: int | None, calib: Calibration, method: str | None = None) -> tuple[Path, str]:
    """`method`: the recipe's width method (planner/methods.py). heads / ffn / None run the heads
    method on heads and the ffn method on FFN channels; taylor scores both in one Taylor pass."""
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    head_frac, ffn_frac = width_fractions(cfg, heads, kv_heads, ffn)

    def build(out: Path) -> dict:
        from edgeprune.stages.calib import calibration_windows
        from edgeprune.stages.width import prune_width
        from edgeprune.toolchain.hf import load_model, save_model

        model, tok = load_model(hf_dir)
        windows = calibration_windows(tok, calib)
        info = {}
        if method == "taylor":
            n_kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
            info["taylor"] = taylor_to_shape(model, windows, round(head_frac * n_kv), ffn if ffn_frac > 0 else None)
        else:
            if head_frac > 0:
                info["heads"] = _summary(prune_width(model, windows, "heads", head_frac, "groups"))
            if ffn_frac > 0:
                info["ffn"] = _summary(prune_width(model, windows, "ffn", ffn_frac))
        save_model(model, tok, out)
        return {"method": method or "heads+ffn", **info}

    step_key = {"model": key, "heads": heads, "kv_heads": kv_heads, "ffn": ffn,
                "calibration": calib.model_dump(mode="json")}
    if method == "taylor":  # heads / ffn / None compute exactly the same thing: same key, shared cache
        step_key["method"] = method
    res = store.run("width", step_key, build)
    return res.path, res.path.name


def taylor_to_shape(model, windows, kv_groups_removed: int, ffn_keep: int | None) -> dict:
    """LLM-Pruner-style coupled pruning at a shape the cost model priced: one first-order Taylor pass
    scores query heads, KV heads and MLP channels; whole GQA groups (query heads + KV head) and
    MLP channels then go by those scores, in place."""
    from edgeprune.methods.width import keep_channels, keep_kv_groups
    from edgeprune.stages.width import taylor_scores
    from edgeprune.surgery.ffn import keep_ffn_channels
    from edgeprune.surgery.heads import keep_heads

    before = sum(p.numel() for p in model.model.layers.parameters())
    scores = taylor_scores(model, windows)
    if kv_groups_removed:
        keep_heads(model, keep_kv_groups(scores["heads"], scores["kv"], kv_groups_removed))
    if ffn_keep is not None:
        keep_ffn_channels(model, keep_channels(scores["ffn"], ffn_keep))
    after = sum(p.numel() for p in model.model.layers.parameters())
    cfg = model.config
    return {"importance": "taylor", "kv_groups_removed": kv_groups_removed, "removed_fraction": 1 - after / before,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size}


def _summary(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "decision"}
