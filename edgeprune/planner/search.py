"""A decoder layer's share of the per-token weights: the shape prior the plan prints.

The search itself lives in searcher.py / candidates.py (cost model + calibration).
"""

from __future__ import annotations


def layer_cost_share(cfg: dict | None) -> float:
    """Fraction of per-token weight bytes in one decoder layer (memory-bound decode)."""
    if not cfg or not cfg.get("hidden_size"):
        return 0.03
    h = cfg["hidden_size"]
    L = cfg["num_hidden_layers"]
    heads = cfg.get("num_attention_heads") or 1
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    inter = cfg.get("intermediate_size") or 4 * h
    vocab = cfg.get("vocab_size") or 32000
    layer = h * hd * (2 * heads + 2 * kv) + 3 * h * inter
    head = vocab * h  # the output projection is read every token (tied or not)
    return layer / (L * layer + head)
