"""The planner's typed records, from the worker that measures a candidate to manifest.json.

* `Measurement`: one candidate built (prune, width, heal, recover, export) and measured (benchmark,
  perplexity, KL divergence): what planner/execute.measure returns.
* `CandidateRecord`: a measurement judged against the baseline, the budget and its prediction:
  one entry of the manifest's "iterations".
* `Decision`, `Rejection`, `Challenge`, `QualitySeed`: the entries of the manifest's "search" log.
* `Outcome`: the run's result; `final` is the delivered candidate.

Each writes its manifest entry with `to_dict()`; the keys are the manifest's (report/manifest.py,
SCHEMA). Runner outputs (bench, verify, ppl, heal, recovery) stay the JSON records their stages write.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeprune.targets.costmodel import Candidate


@dataclass(frozen=True)
class Measurement:
    candidate: Candidate
    removed_layers: list[int]
    layers: int
    gguf: str
    gguf_key: str  # the step-store key of the GGUF: pruned model's key + quant
    gguf_bytes: int
    verify: dict  # export's logit checks (stages/export.py)
    bench: dict  # the runner's benchmark record (devices/runners.py), paired with the baseline or not
    latency_s: float  # prompt + answer at the budget's token counts, from `bench`
    ppl: dict  # the perplexity record (stages/evaluate.py)
    measured_where: dict
    width_method: str | None = None  # planner.methods.width_name, for a width candidate
    heal: dict | None = None
    recovery: dict | None = None
    kld: dict | None = None

    @property
    def k(self) -> int:
        return self.candidate.layers_removed

    @property
    def quant(self) -> str:
        return self.candidate.quant

    @property
    def pruned(self) -> bool:
        return self.candidate.pruned

    def to_dict(self) -> dict:
        out = {"k": self.k, "quant": self.quant, "candidate": asdict(self.candidate),
               "removed_layers": self.removed_layers, "layers": self.layers, "gguf": self.gguf,
               "gguf_bytes": self.gguf_bytes, "verify": self.verify, "bench": self.bench, "latency_s": self.latency_s,
               "width_method": self.width_method, "ppl": self.ppl, "measured_where": self.measured_where}
        out |= {k: v for k in ("heal", "recovery", "kld") if (v := getattr(self, k)) is not None}
        return out | {"gguf_key": self.gguf_key}


@dataclass(frozen=True)
class CandidateRecord:
    measured: Measurement
    ppl_ratio: float  # perplexity / the baseline's
    predicted: dict  # the prediction the decision used (planner/searcher.prediction_record)
    drift: dict  # the machine's speed vs the run's level, measured with the candidate (planner/drift.py)
    speed_level: dict  # the baseline that level is
    checks: dict  # budget constraint -> {required, measured, kind, met} (stages/bench.check_budget)
    prediction_error_pct: dict  # at the candidate's own drift: the cost model's error
    absolute_prediction_error_pct: dict  # the prediction as the decision made it
    latency_at_level_s: float | None = None  # a relative budget's latency, at the baseline's level

    @property
    def speed_ok(self) -> bool:
        return all(c["met"] for c in self.checks.values())

    def met(self, max_ppl_ratio: float) -> bool:
        return self.speed_ok and self.ppl_ratio <= max_ppl_ratio

    @property
    def checked_latency_s(self) -> float:
        return self.measured.latency_s if self.latency_at_level_s is None else self.latency_at_level_s

    def to_dict(self) -> dict:
        out = self.measured.to_dict() | {"ppl_ratio": self.ppl_ratio, "predicted": self.predicted,
                                            "drift": self.drift, "speed_level": self.speed_level}
        if self.latency_at_level_s is not None:
            out["latency_at_level_s"] = self.latency_at_level_s
        return out | {"checks": self.checks, "prediction_error_pct": self.prediction_error_pct,
                      "absolute_prediction_error_pct": self.absolute_prediction_error_pct}


@dataclass(frozen=True)
class Option:
    """One candidate as a decision saw it: predicted, never measured."""
    candidate: Candidate
    label: str
    latency_s: float
    tg_tps: float
    file_bytes: int
    ram_bytes: int
    ppl_ratio: float
    shortfall: dict

    def to_dict(self) -> dict:
        return {"candidate": asdict(self.candidate), "label": self.label, "latency_s": self.latency_s,
                "tg_tps": self.tg_tps, "file_bytes": self.file_bytes, "ram_bytes": self.ram_bytes,
                "ppl_ratio": self.ppl_ratio, "shortfall": self.shortfall, "kind": "predicted"}


@dataclass(frozen=True)
class Decision:
    """One search step: the Pareto front of the predictions and the candidate picked to measure."""
    verdict: str  # "try" | "infeasible"
    choice: Option | None
    front: list[Option]
    requirements: dict

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "choice": self.choice.to_dict() if self.choice else None,
                "front": [x.to_dict() for x in self.front], "requirements": self.requirements}


@dataclass(frozen=True)
class Rejection:
    """A searched candidate whose build failed its export gate; the search went on without it."""
    label: str
    why: str

    def to_dict(self) -> dict:
        return {"rejected": self.label, "why": self.why}


@dataclass(frozen=True)
class Challenge:
    """Whether a quant type alone could beat the pruned choice (execute.challenge_with_quant_only)."""
    label: str
    predicted_latency_s: float
    pruned_latency_s: float
    measured: bool
    why: str | None = None

    def to_dict(self) -> dict:
        out = {"challenger": self.label, "predicted_latency_s": self.predicted_latency_s,
               "pruned_latency_s": self.pruned_latency_s, "measured": self.measured}
        return out | ({"why": self.why} if self.why else {})


@dataclass(frozen=True)
class QualitySeed:
    """Perplexity ratios earlier runs measured, fitted before the first decision (planner/quality_memory.py)."""
    samples: int
    beta: float
    file: str

    def to_dict(self) -> dict:
        return {"quality_memory": {"samples": self.samples, "beta": self.beta, "file": self.file}}


SearchEntry = Decision | Rejection | Challenge | QualitySeed


@dataclass(frozen=True)
class Outcome:
    met: bool
    reason: str
    final: CandidateRecord | None = None  # the delivered candidate (None when the budget was missed)
    iteration: int | None = None  # its index in the run's records
    misses: dict = field(default_factory=dict)  # the last candidate's missed checks, when not met

    def to_dict(self) -> dict:
        """The manifest's "result", less what publishing adds (artifact, measured_vs_required)."""
        if self.met:
            m = self.final.measured
            return {"met": True, "chosen_k": m.k, "chosen_quant": m.quant, "reason": self.reason,
                    "iteration": self.iteration}
        return {"met": False, "chosen_k": None, "reason": self.reason, "misses": self.misses}
