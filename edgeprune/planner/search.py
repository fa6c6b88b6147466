"""How many layers to remove next: a pure function of the measurements so far.

Each budget constraint is a cost q(k) that must stay <= its bound (latency, seconds per
decoded token, RAM, file size) and is modelled as linear in the number of layers removed k.
With one measurement (k=0) the slope comes from the model's shapes: removing a layer saves
its share of the per-token weights (the embedding/LM head are a fixed cost). With two or more
measurements the slope is fitted from them (secant of the two nearest), so the prediction is
corrected by what the device actually did.
"""

from __future__ import annotations

import math


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


def costs(checks: dict) -> dict[str, tuple[float, float]]:
    """Budget checks -> {name: (cost, bound)} all of the form cost <= bound."""
    out = {}
    for name, c in checks.items():
        if c["kind"] == "max":
            out[name] = (c["measured"], c["required"])
        else:  # a minimum rate becomes a maximum time per unit
            out[name] = (1.0 / c["measured"], 1.0 / c["required"])
    return out


def predict_k(history: list[tuple[int, dict]], share: float) -> int | None:
    """Smallest k predicted to meet every constraint; history = [(k, checks), ...] measured.

    Returns None when the budget is already met at the least-pruned measured point.
    """
    history = sorted(history, key=lambda h: h[0])
    need = 0
    for name in history[0][1]:
        pts = [(k, costs(ch)[name]) for k, ch in history]
        bound = pts[0][1][1]
        if pts[0][1][0] <= bound:
            continue
        slope = _slope(pts, share)
        if slope >= 0:  # removing layers does not help this constraint
            return 10**9
        k0, (c0, _) = pts[-1] if len(pts) > 1 else pts[0]
        need = max(need, math.ceil(k0 + (bound - c0) / slope - 1e-9))
    return None if need == 0 else need


def _slope(pts: list[tuple[int, tuple[float, float]]], share: float) -> float:
    if len(pts) >= 2 and pts[-1][0] != pts[-2][0]:
        (ka, (ca, _)), (kb, (cb, _)) = pts[-2], pts[-1]
        return (cb - ca) / (kb - ka)
    k0, (c0, _) = pts[0]
    return -c0 * share / max(1e-9, 1.0 - k0 * share)


def next_k(history: list[tuple[int, dict]], share: float, max_k: int) -> tuple[str, int]:
    """('met', k) | ('try', k) | ('infeasible', k_needed)."""
    met = [k for k, ch in history if all(c["met"] for c in ch.values())]
    if met:
        return "met", min(met)
    tried = {k for k, _ in history}
    k = predict_k(history, share)
    if k is None:
        return "met", max(tried)
    k = max(k, max(tried) + 1)  # never retry a k that missed
    if k > max_k:
        return "infeasible", k
    return "try", k
