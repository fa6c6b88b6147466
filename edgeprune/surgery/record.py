"""What a pruned checkpoint lost, written beside it (`edgeprune-pruned.json`).

The record says which decoder layers (original indices), which query heads and KV groups per
layer, and which MLP channels per layer were removed, with the source model's shape, so a pruned
folder explains itself without the run that made it. It is also how `prune --out` recognises a
folder it may replace: one that holds this file was written by edgeprune; anything else is the
user's and is never deleted.
"""

from __future__ import annotations

import json
from pathlib import Path

RECORD = "edgeprune-pruned.json"


def shape_of(cfg) -> dict:
    """The source model's shape, from a transformers config."""
    n_heads = cfg.num_attention_heads
    return {"num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": n_heads,
            "num_key_value_heads": getattr(cfg, "num_key_value_heads", None) or n_heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size}


def removed_layers(remove: list[int]) -> dict:
    return {"layers": sorted(set(int(i) for i in remove))}


def removed_width(shape: dict, decision: dict) -> dict:
    """From a width decision ({'heads': kept query heads per layer, 'ffn': kept channels per layer})
    to what went: query heads, KV groups and MLP channels per layer (original indices)."""
    out: dict = {}
    heads, ffn = decision.get("heads"), decision.get("ffn")
    if heads:
        n_heads, n_kv = shape["num_attention_heads"], shape["num_key_value_heads"]
        gs = n_heads // n_kv
        out["query_heads"] = [sorted(set(range(n_heads)) - set(kept)) for kept in heads]
        out["kv_groups"] = [sorted(set(range(n_kv)) - {h // gs for h in kept}) for kept in heads]
    if ffn:
        inter = shape["intermediate_size"]
        out["mlp_channels"] = [sorted(set(range(inter)) - set(kept)) for kept in ffn]
    return out


def write_record(folder: Path, *, kind: str, method: str, source: str, shape: dict, removed: dict,
                 options: dict | None = None) -> Path:
    from edgeprune import __version__

    record = {"tool": "edgeprune", "edgeprune_version": __version__, "kind": kind, "method": method,
              "source": source, "source_shape": shape, "options": options or {}, "removed": removed}
    path = Path(folder) / RECORD
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def read_record(folder: Path) -> dict | None:
    """The record of an edgeprune output folder, or None (no record, or not edgeprune's)."""
    try:
        data = json.loads((Path(folder) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "edgeprune" else None
