"""The planner's search state: shapes, calibrated cost model, quality model, what was measured.

`decide()` scores every candidate of the recipe's grid with the current calibration, builds the
Pareto front and picks the best-quality candidate predicted to meet the budget; `observe()`
feeds a measurement back (calibration sample for the target, quality refit). Execution lives
in execute.py; this module never prunes or benchmarks anything.

Speeds live at two scales (planner/drift.py): the calibration is fitted at the run's *level* (its
baseline's measurement; paired samples are divided by their drift), and a decision predicts
level x the latest measured drift, since the budget is absolute and the machine runs at that drift now.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from edgeprune.planner.budget import Requirements, compile_budget
from edgeprune.planner.candidates import (QualityModel, Scored, choose, closest_miss, grid, kept_fractions, mix_priors,
                                          pareto_front, score_all)
from edgeprune.planner.drift import NO_DRIFT, at_drift
from edgeprune.report import records
from edgeprune.targets import calibration as cal
from edgeprune.targets.costmodel import Candidate, DeviceSpec, Factors, Prediction, predict
from edgeprune.targets.gguf_size import ModelShape, ffn_multiple, gguf_bytes


def width_methods() -> list[str]:
    from edgeprune import registry

    registry.kinds()  # loads built-ins
    return registry.names("width") if "width" in registry.kinds() else []


def head_options(base: ModelShape, fractions: list[float]) -> list[tuple[int | None, int | None]]:
    """(query heads, KV heads) kept per layer for each fraction, by whole GQA groups (the width
    method's 'groups' mode: a KV head leaves with its query heads, so heads % kv_heads stays 0)."""
    group = base.heads // base.kv_heads
    out: list[tuple[int | None, int | None]] = []
    for f in sorted(set(fractions), reverse=True):
        kv = min(base.kv_heads, max(1, int(round(base.kv_heads * f))))
        if f < 1.0 and (kv >= base.kv_heads or base.hidden % (kv * group)):
            _refuse_heads_keep(base, f, kv)
        val = (None, None) if kv >= base.kv_heads else (kv * group, kv)
        if val not in out:
            out.append(val)
    return out


def _refuse_heads_keep(base: ModelShape, f: float, kv: int) -> None:
    """A fraction below 1 that keeps every group (round(2 x 0.75) = 2) used to drop the head
    candidates without a word; one whose query heads do not divide hidden_size cannot be saved."""
    from edgeprune.errors import ConfigError

    group = base.heads // base.kv_heads
    ok = [k / base.kv_heads for k in range(1, base.kv_heads) if base.hidden % (k * group) == 0]
    why = (f"keeps round({base.kv_heads} x {f:g}) = {kv} of {base.kv_heads} KV groups, i.e. all of them"
           if kv >= base.kv_heads else f"keeps {kv * group} query heads, which do not divide hidden_size {base.hidden}")
    raise ConfigError(f"heads_keep {f:g} {why}; heads go by whole KV groups", where="--heads-keep / search.heads_keep",
                      fix=f"choose from {', '.join(f'{x:.3g}' for x in ok)}" if ok else
                      "this model's heads cannot be pruned by whole groups; leave heads_keep at 1.0")


def ffn_options(base: ModelShape, fractions: list[float], multiple: int = 32) -> list[int | None]:
    """FFN channels kept, at most each fraction, a multiple of `multiple` (32: every quant type's
    blocks still fit; gguf_size.ffn_multiple: no ffn_down falls back to another type)."""
    out: list[int | None] = []
    for f in sorted(set(fractions), reverse=True):
        n = max(multiple, int(base.ffn * f) // multiple * multiple)
        val = None if n >= base.ffn else n
        if val not in out:
            out.append(val)
    return out


@dataclass(frozen=True)
class Decision:
    """What `Searcher.decide` found: the candidate to measure next (none: infeasible), the Pareto
    front it was picked from, the nearest miss and the budget compiled to speeds."""
    verdict: str  # "try" | "infeasible"
    choice: Scored | None
    front: list[Scored]
    closest: Scored | None
    requirements: Requirements

    def record(self) -> records.Decision:
        def option(x: Scored) -> records.Option:
            return records.Option(x.cand, x.label, x.latency_s, x.pred.tg_tps, x.pred.file_bytes, x.pred.ram_bytes,
                                  x.ppl_ratio, x.shortfall)
        return records.Decision(self.verdict, option(self.choice) if self.choice else None,
                                [option(x) for x in self.front], self.requirements.to_dict())


@dataclass
class Searcher:
    base: ModelShape
    target: object
    recipe: object
    max_removed: int
    quality: QualityModel
    device: DeviceSpec
    calib_path: object = None
    fingerprint: dict | None = None
    kv_bytes_meta: int | None = None
    width_ok: bool = False
    factors: Factors = field(default_factory=Factors)
    measured: dict = field(default_factory=dict)   # Candidate -> {"speed_ok", "quality_ok"}
    run_samples: list = field(default_factory=list)  # calibration samples measured by this run
    history: Factors = field(default_factory=Factors)  # fitted on the samples earlier runs stored
    drift: dict = field(default_factory=lambda: dict(NO_DRIFT))  # the latest measurement's, vs the run's level
    quality_memory: tuple | None = None  # (shared file, key): planner/quality_memory.py

    @classmethod
    def build(cls, base: ModelShape, target, recipe, max_removed: int, depth_cost: list[float],
              calib_path=None, fingerprint=None) -> "Searcher":
        s = cls(base, target, recipe, max_removed, QualityModel(depth_cost, recipe.export.quant),
                DeviceSpec.from_target(target), calib_path, fingerprint, width_ok=bool(width_methods()))
        s.quality.quant |= mix_priors(base, recipe.search.quant_choices(), s.quality.quant)
        if calib_path:  # read once, before this run adds samples: the file as the run started
            s.history = cal.current_factors(calib_path, fingerprint)
        s.reload()
        return s

    def reload(self) -> None:
        """Speed levels come from this run's own measurements (earlier runs ran under other loads);
        earlier runs contribute only the per-quant-type efficiencies of types this run has not
        measured, rescaled to this run's level (calibration.relevel). The stored file is the
        snapshot taken when the run first started, so a resumed run decides as it did."""
        if self.run_samples:
            self.factors = cal.relevel(self.history, cal.fit(self.run_samples))
        else:
            self.factors = self.history

    def seed_quality(self, samples: list[dict]) -> int:
        """Fit the quality model to ratios earlier runs measured (same model and protocol); returns how many."""
        from edgeprune.planner.quality_memory import candidate_of

        for sample in samples:
            cand = candidate_of(sample)
            self.quality.fit(cand, sample["ppl_ratio"], *kept_fractions(self.base, cand))
        return len(samples)

    def candidates(self, allow_unexecutable: bool = False) -> list[Candidate]:
        sr = self.recipe.search
        width = self.width_ok or allow_unexecutable
        heads = head_options(self.base, sr.heads_keep) if width else [(None, None)]
        from edgeprune.planner.methods import candidate_allowed  # the width method decides which shapes exist

        # FFN widths per quant type: a K-quant's keep the 256-block grid (gguf_size.ffn_multiple)
        return [c for q in sr.quant_choices()
                for c in grid(self.base.layers, self.max_removed, [q], heads,
                              ffn_options(self.base, sr.ffn_keep, ffn_multiple(self.base, q)) if width else [None])
                if candidate_allowed(self.recipe, c.heads, c.ffn)]

    def predict_level(self, c: Candidate) -> Prediction:
        """At the run's speed level: what the calibration was fitted on."""
        b = self.target.budget
        return predict(self.base, c, self.device, self.factors, b.prompt_tokens, b.answer_tokens,
                       b.context_tokens, self.kv_bytes_meta)

    def predict(self, c: Candidate) -> Prediction:
        """As the machine would measure it now: the level scaled by the latest drift."""
        return at_drift(self.predict_level(c), self.drift)

    def requirements(self) -> Requirements:
        p = self.predict(Candidate(quant=self.recipe.export.quant))
        return compile_budget(self.target.budget, p.pp_tps / p.tg_tps)

    def score(self, allow_unexecutable: bool = False) -> list[Scored]:
        return score_all(self.candidates(allow_unexecutable), self.base, self.predict, self.quality,
                         self.requirements(), self.target.budget)

    def decide(self, allow_unexecutable: bool = False) -> Decision:
        scored = self.score(allow_unexecutable)
        exclude = {c for c, m in self.measured.items() if not (m["speed_ok"] and m["quality_ok"])}
        floor = self.target.budget.max_ppl_ratio
        pick = choose(scored, self.recipe.search.margin, floor, exclude)
        if pick is None:  # nothing clears the margin: accept one predicted to meet at all
            pick = choose(scored, 0.0, floor, exclude)
        closest = closest_miss([s for s in scored if s.cand not in exclude], floor)
        if pick is None and closest is not None and closest.ppl_ratio <= floor \
                and closest.cand not in self.measured and closest.worst <= 1.0 + self.recipe.search.noise:
            pick = closest  # a predicted miss within measurement noise: measure it before giving up
        return Decision("try" if pick else "infeasible", pick, pareto_front(scored), closest, self.requirements())

    def observe(self, cand: Candidate, pred: Prediction, it: records.CandidateRecord) -> None:
        """A measurement of `cand` (`it.drift`: the machine's, vs the level): calibrate the cost model
        at the level and the quality model; later decisions predict at this drift."""
        bench = it.measured.bench
        if self.kv_bytes_meta is None and not cand.pruned:
            # exact key/value (tokenizer) bytes of this model's GGUFs, so pruned sizes are exact too
            self.kv_bytes_meta = max(0, it.measured.gguf_bytes - gguf_bytes(self.base, cand.quant, kv_bytes=0))
        drift = it.drift
        sample = cal.normalized(cal.sample_from(pred, bench, cand.label(self.base), self.target.device.runner,
                                                cand.quant), drift, it.speed_level)
        self.run_samples.append(sample)
        if self.target.budget.latency_fraction is None:  # a relative budget is judged at the level
            self.drift = dict(drift)
        if self.calib_path is not None:
            cal.add_sample(self.calib_path, dict(self.fingerprint or {}), sample)
        self.reload()
        ratio = it.ppl_ratio
        if math.isfinite(ratio):
            self.quality.fit(cand, ratio, *kept_fractions(self.base, cand))
            if self.quality_memory is not None:
                from edgeprune.planner.quality_memory import remember

                remember(*self.quality_memory, cand, ratio)
        self.measured[cand] = {"speed_ok": it.speed_ok, "quality_ok": ratio <= self.target.budget.max_ppl_ratio}


def prediction_record(s: Searcher, cand: Candidate, level: Prediction) -> dict:
    """What the manifest stores as 'predicted' for one candidate, labelled as such: the speeds the
    decision used (`level` x the drift then), and the level-scale ones the drift-corrected error uses."""
    b = s.target.budget
    f = s.factors
    pred = at_drift(level, s.drift)
    measured_type = cand.quant in f.decode_quant
    return {"kind": "predicted", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "by": f"cost model ({f.samples} calibration samples of target '{s.target.name}', runner "
                  f"{s.target.device.runner}, {len(s.run_samples)} of them measured by this run; {cand.quant} "
                  f"efficiency {'measured' if measured_type else 'prior: mean of the measured types'})",
            "decode_efficiency": 1.0 / f.decode_theta(cand.quant)[0],
            "quant_efficiency": "measured" if measured_type else "prior",
            "tg_tps": pred.tg_tps, "pp_tps": pred.pp_tps, "latency_s": pred.latency_s(b.prompt_tokens, b.answer_tokens),
            "drift_applied": dict(s.drift), "level": {"tg_tps": level.tg_tps, "pp_tps": level.pp_tps},
            "file_bytes": pred.file_bytes, "ram_bytes": pred.ram_bytes, "kv_bytes": pred.kv_bytes,
            "ppl_ratio": s.quality.predict(cand, *kept_fractions(s.base, cand))}


def at_measured_drift(predicted: dict, drift: dict, budget) -> dict:
    """The level-scale prediction scaled by the drift measured with the candidate (its same-minute
    reference): what it leaves of the error is the cost model's own, not the machine's drift."""
    tg, pp = predicted["level"]["tg_tps"] * drift["tg_tps"], predicted["level"]["pp_tps"] * drift["pp_tps"]
    return {**predicted, "tg_tps": tg, "pp_tps": pp,
            "latency_s": budget.prompt_tokens / pp + budget.answer_tokens / tg}


def errors_pct(predicted: dict, m: records.Measurement) -> dict:
    """(predicted - measured) / measured, in %, for every quantity both sides have."""
    bench = m.bench
    pairs = {"tg_tps": bench["tg_tps"]["median"], "pp_tps": bench["pp_tps"]["median"],
             "latency_s": m.latency_s, "file_bytes": m.gguf_bytes, "ram_bytes": bench.get("peak_rss_bytes")}
    return {k: round(100 * (predicted[k] - v) / v, 2) for k, v in pairs.items() if v}
