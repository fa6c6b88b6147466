"""Joint search over depth x heads x FFN x quant type: predict, score, Pareto front, choose.

Pure functions of (model shape, cost-model factors, quality model, budget). The quality
estimate is a predicted perplexity ratio vs the unpruned baseline:

    log(ppl ratio) = beta * depth_cost(k) + gamma_h * (1 - heads kept) + gamma_f * (1 - ffn kept)
                     + quant_term(quant) - quant_term(baseline quant)

depth_cost(k) is the fraction of layers removed, k / layers (the method sets *which* layers). The
first version used the removed layers' share of the method's scores: on SmolLM2 BI puts half its
mass on layer 0, so the share compressed every k and the prior predicted -8L at x1.39 where x4.2 was
measured (bench/README, Planner). In k / n, SmolLM2's measured ln(ppl ratio) is 5.5-6.9 x k/n for BI,
4.8-4.9 for ppl-greedy, 4.9-5.6 for angular up to -6 (bench/README, methods table): one slope fits
methods and k. beta, gamma and the quant terms start at priors and are refitted from measured
perplexity (QualityModel.fit) after every iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgeprune import quants
from edgeprune.planner.budget import shortfalls
from edgeprune.targets.costmodel import Candidate, Prediction

# ln(ppl ratio vs F16) per quant type before any measurement (QuantSpec.ppl_prior says where from)
QUANT_PRIOR = {name: spec.ppl_prior for name, spec in quants.SPECS.items()}
BETA_PRIOR = 5.5    # ln(ppl ratio) per fraction of layers removed: -8 of 30 layers -> x4.3
GAMMA_PRIOR = (1.5, 1.0)  # heads, ffn: ln ratio per fraction removed
# Where each quality prior came from, printed by the paper plan (predict_only.prior_lines)
BETA_PRIOR_SOURCE = ("fitted on SmolLM2-135M (30 layers; block-influence, ppl-greedy and angular orders "
                     "measured x4.19 at -8 layers), not on this model")
GAMMA_PRIOR_SOURCE = "set by hand when width pruning was added, never fitted to a measurement"


@dataclass
class QualityModel:
    depth_cost: list[float]          # depth_cost[k] for k = 0..max
    baseline_quant: str = "Q4_K_M"
    beta: float = BETA_PRIOR
    gamma: tuple[float, float] = GAMMA_PRIOR
    quant: dict = field(default_factory=lambda: dict(QUANT_PRIOR))
    measured: dict = field(default_factory=dict)   # Candidate -> measured ppl ratio

    def predict(self, c: Candidate, heads_frac: float = 1.0, ffn_frac: float = 1.0) -> float:
        if c in self.measured:
            return self.measured[c]
        q = self._quant_term(c.quant) - self._quant_term(self.baseline_quant)
        x = self.beta * self.depth_cost[c.layers_removed] + self.gamma[0] * (1 - heads_frac)
        return math.exp(x + self.gamma[1] * (1 - ffn_frac) + q)

    def _quant_term(self, quant: str) -> float:
        """Measured or prior ln ratio of a quant choice; a mix starts at its type's (measured) term."""
        return self.quant.get(quant, self.quant.get(quants.get(quant).base, 0.05))

    def fit(self, c: Candidate, ratio: float, heads_frac: float = 1.0, ffn_frac: float = 1.0) -> None:
        """Record a measurement; re-derive the quant term (depth 0) or beta (pruned) from it."""
        self.measured[c] = ratio
        log_r = math.log(max(ratio, 1e-6))
        width = self.gamma[0] * (1 - heads_frac) + self.gamma[1] * (1 - ffn_frac)
        base_q = self._quant_term(self.baseline_quant)
        if c.layers_removed == 0 and width == 0:
            self.quant[c.quant] = base_q + log_r
            return
        cost = self.depth_cost[c.layers_removed]
        if cost > 0 and width == 0:
            q = self._quant_term(c.quant) - base_q
            self.beta = max(0.0, (log_r - q) / cost)


def quant_noise(shape, quant: str) -> float:
    """Relative quantization noise of a file: sum over weights of 4^-bits (uniform quantization's
    error variance halves in amplitude per extra bit), the unquantized tensors adding nothing."""
    from edgeprune.targets.gguf_size import tensor_list, tensor_types

    sizes = {name: n for name, _, n in tensor_list(shape)}
    return sum(sizes[name] * 4.0 ** (-8 * b / sizes[name]) for name, t, b in tensor_types(shape, quant)
               if t not in quants.UNQUANTIZED)


def mix_priors(shape, choices: list[str], terms: dict) -> dict:
    """Prior ln ratio of each mixed choice: its type's term scaled by the mix's share of its noise."""
    out = {}
    for name in choices:
        if "+" in name:
            base = quants.get(name).base
            out[name] = terms.get(base, 0.05) * quant_noise(shape, name) / quant_noise(shape, base)
    return out


def depth_costs(removal_order: list[list[int]], n_layers: int) -> list[float]:
    """depth_cost[k] = k / n_layers for each k the method's removal order offers."""
    return [len(removed) / n_layers for removed in removal_order]


@dataclass
class Scored:
    cand: Candidate
    pred: Prediction
    ppl_ratio: float
    latency_s: float
    shortfall: dict
    label: str = ""

    @property
    def worst(self) -> float:
        return max(self.shortfall.values(), default=0.0)

    def meets(self, margin: float, max_ppl_ratio: float) -> bool:
        return self.worst <= 1.0 - margin and self.ppl_ratio <= max_ppl_ratio


def grid(n_layers: int, max_removed: int, quants: list[str], heads: list[tuple[int | None, int | None]],
         ffns: list[int | None]) -> list[Candidate]:
    """Every (layers removed, (heads, kv heads), ffn, quant) combination."""
    return [Candidate(k, h, f, q, kv) for q in quants for h, kv in heads for f in ffns
            for k in range(max_removed + 1)]


def kept_fractions(base, c: Candidate) -> tuple[float, float]:
    """Shares of the query heads and FFN channels `c` keeps: the quality model's width terms."""
    return (c.heads or base.heads) / base.heads, (c.ffn or base.ffn) / base.ffn


def score_all(cands, base, predict_fn, quality: QualityModel, req, budget) -> list[Scored]:
    out = []
    for c in cands:
        p = predict_fn(c)
        lat = p.latency_s(budget.prompt_tokens, budget.answer_tokens)
        sf = shortfalls(req, budget, {"tg_tps": p.tg_tps, "pp_tps": p.pp_tps, "ram_bytes": p.ram_bytes,
                                      "file_bytes": p.file_bytes})
        out.append(Scored(c, p, quality.predict(c, *kept_fractions(base, c)), lat, sf, c.label(base)))
    return out


def pareto_front(scored: list[Scored]) -> list[Scored]:
    """Candidates no other beats on both predicted latency (or decode time) and quality."""
    def speed(s: Scored) -> float:
        return s.latency_s

    ordered = sorted(scored, key=lambda s: (speed(s), s.ppl_ratio))
    front, best_q = [], math.inf
    for s in ordered:
        if s.ppl_ratio < best_q - 1e-12:
            front.append(s)
            best_q = s.ppl_ratio
    return front


def choose(scored: list[Scored], margin: float, max_ppl_ratio: float, exclude: set) -> Scored | None:
    """Best predicted quality among candidates predicted to meet every constraint with `margin`;
    ties go to the faster one. Candidates already measured and missed are excluded."""
    ok = [s for s in scored if s.cand not in exclude and s.meets(margin, max_ppl_ratio)]
    if not ok:
        return None
    return min(ok, key=lambda s: (round(s.ppl_ratio, 9), s.worst, s.cand.layers_removed))


def closest_miss(scored: list[Scored], max_ppl_ratio: float) -> Scored | None:
    """The candidate nearest to meeting the speed/size budget within the quality floor (for 'what is needed')."""
    ok = [s for s in scored if s.ppl_ratio <= max_ppl_ratio] or scored
    return min(ok, key=lambda s: s.worst) if ok else None


def quant_only_challengers(scored: list[Scored], quants: list[str], measured: set[str],
                           noise: float) -> list[tuple[Scored, bool]]:
    """The full-depth candidate of each quant type in `quants` not yet `measured` (and scored), and
    whether to measure it: yes when the cost model predicts it meets the budget within `noise`. A
    pruned model is shipped only if no such candidate does better, and a quant type meeting the
    budget is almost always the better one, so being slower than the pruned choice is no reason to
    leave it out."""
    full = {x.cand.quant: x for x in scored if not x.cand.pruned}
    return [(full[q], full[q].worst <= 1.0 + noise) for q in quants if q in full and q not in measured]

