"""How many layers to remove next: a pure function of the measurements so far.

Each budget constraint is a cost q(k) that must stay <= its bound (latency, seconds per
decoded token, RAM, file size) and is modelled as linear in the number of layers removed k.
With one measurement (k=0) the slope comes from the model's shapes: removing a layer saves
its share of the per-token weights (the embedding/LM head are a fixed cost). With two or more
measurements the line is fitted to them (least squares), so the prediction is corrected by
what the device actually did. The quality floor bounds k from above once a k has broken it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    k: int
    checks: dict
    quality_ok: bool = True

    @property
    def speed_ok(self) -> bool:
        return all(c["met"] for c in self.checks.values())


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


def fit_line(pts: list[tuple[int, float]], share: float) -> tuple[float, float]:
    """(intercept, slope) of cost vs k: least squares, or the shape prior with one point."""
    ks = {k for k, _ in pts}
    if len(ks) >= 2:
        n = len(pts)
        mk = sum(k for k, _ in pts) / n
        mc = sum(c for _, c in pts) / n
        slope = sum((k - mk) * (c - mc) for k, c in pts) / sum((k - mk) ** 2 for k, _ in pts)
        return mc - slope * mk, slope
    k0, c0 = pts[0]
    slope = -c0 * share / max(1e-9, 1.0 - k0 * share)
    return c0 - slope * k0, slope


def predict_k(history: list, share: float) -> int:
    """Smallest k predicted to meet every speed/size constraint (0 when the baseline meets them)."""
    history = [_as_point(h) for h in history]
    base = min(history, key=lambda p: p.k)
    need = 0
    for name in base.checks:
        pts = [(p.k, costs(p.checks)[name][0]) for p in history]
        bound = costs(base.checks)[name][1]
        if costs(base.checks)[name][0] <= bound:
            continue
        intercept, slope = fit_line(pts, share)
        if slope >= 0:  # removing layers does not help this constraint
            return 10**9
        need = max(need, math.ceil((bound - intercept) / slope - 1e-9))
    return need


def next_k(history: list, share: float, max_k: int) -> tuple[str, int]:
    """('met', k) | ('try', k) | ('infeasible', k_needed) | ('quality_floor', k_needed)."""
    pts = [_as_point(h) for h in history]
    good = [p.k for p in pts if p.speed_ok and p.quality_ok]
    if good:
        return "met", min(good)
    lower = max([p.k for p in pts if not p.speed_ok], default=-1) + 1  # never retry a k that missed
    broken = [p.k for p in pts if not p.quality_ok]
    upper = min([max_k] + [k - 1 for k in broken])
    k = max(predict_k(pts, share), lower)
    if k <= upper:
        return "try", k
    if broken and k >= min(broken):
        return "quality_floor", k
    # A prediction from shapes alone is uncalibrated: measure the deepest allowed cut before
    # calling the budget infeasible; after that the fitted line decides.
    if len({p.k for p in pts}) == 1 and upper >= lower:
        return "try", upper
    return "infeasible", k


def _as_point(h) -> Point:
    return h if isinstance(h, Point) else Point(h[0], h[1])
