"""Run a Plan: baseline, then search -> measure -> recalibrate until the budget is met (searcher.py).

Every searched candidate is benchmarked paired with the baseline GGUF (planner/drift.py): the
manifest keeps per candidate the reference's numbers (`bench.reference`, `bench.paired`), the
drift, and two errors: `prediction_error_pct` (the prediction at the candidate's own measured
drift: the cost model's error) and `absolute_prediction_error_pct` (the prediction the decision
used, made before the measurement: model + the machine's drift since). Budget checks use the
absolute measured numbers: the budget is absolute.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgeprune import registry
from edgeprune.data import eval_text
from edgeprune.devices.runners import cpu_model, runner_spec
from edgeprune.errors import ExportError
from edgeprune.planner.plan import Plan
from edgeprune.planner import quality_memory as qmem
from edgeprune.planner.candidates import BETA_PRIOR, depth_costs, quant_only_challengers
from edgeprune.planner.searcher import Decision, Searcher, at_measured_drift, errors_pct, prediction_record
from edgeprune.report.records import (CandidateRecord, Challenge, Measurement, Outcome, QualitySeed, Rejection,
                                      SearchEntry)
from edgeprune.store import StepStore
from edgeprune.store.resume import run_calibration_path
from edgeprune.planner.budget import with_relative_latency
from edgeprune.planner.drift import at_level, paired_drift
from edgeprune.planner.load_guard import LoadPolicy
from edgeprune.planner.measure import measure
from edgeprune.stages.bench import check_budget, latency_s
from edgeprune.stages.evaluate import evaluate_delivered
from edgeprune.stages.load import import_model
from edgeprune.stages.score import score_depth
from edgeprune.targets import calibration as cal
from edgeprune.targets.costmodel import Candidate
from edgeprune.targets.gguf_size import ModelShape


@dataclass
class RunState:
    plan: Plan
    store: StepStore
    started: float = field(default_factory=time.time)
    model_hash: str = ""
    scores: list[float] = field(default_factory=list)
    iterations: list[CandidateRecord] = field(default_factory=list)  # the baseline first
    outcome: Outcome | None = None
    search_log: list[SearchEntry] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)  # the evaluate stage's zero-shot records (recipe.evaluate)
    log: Callable[[str], None] = print
    load_policy: LoadPolicy = field(default_factory=LoadPolicy)  # planner/load_guard.py
    shared_calibration: Path | None = None  # the (target, model shape) calibration file this run feeds


def ppl_ratio(m: Measurement, base: Measurement) -> float:
    return m.ppl["ppl"] / base.ppl["ppl"]


def make_searcher(state: RunState, hf_dir: Path, stats, base_layers: int) -> Searcher:
    plan, r = state.plan, state.plan.recipe
    cfg = json.loads((hf_dir / "config.json").read_text())
    base = ModelShape.from_config(cfg)
    method = registry.get("depth", r.depth.method)
    max_k = plan.max_removed if plan.max_removed is not None else base_layers - 1
    order = [method.select(stats, k) if k else [] for k in range(max_k + 1)]
    dcost = depth_costs(order, base.layers)
    t = plan.target
    fp = cal.fingerprint(t, {"cpu_model": cpu_model()} if runner_spec(t.device.runner).on_this_machine else None)
    # a private copy in --out, so a resumed run decides with what the first attempt knew
    state.shared_calibration = cal.calibration_path(t.name, t.device.runner, cal.shape_key(base))
    calib = run_calibration_path(plan.out, state.shared_calibration)
    s = Searcher.build(base, t, r, max_k, dcost, calib, fp)
    key = qmem.memory_key(state.model_hash, r)
    s.quality_memory = (qmem.memory_path(key), key)
    seeded = s.seed_quality(qmem.snapshot(s.quality_memory[0], plan.out))
    if seeded:
        state.search_log.append(QualitySeed(seeded, s.quality.beta, str(s.quality_memory[0])))
        state.log(f"quality: {seeded} candidates of this model measured by earlier runs (same method, heal and "
                  f"protocol); depth slope {s.quality.beta:.2f} instead of the prior {BETA_PRIOR:g}")
    return s


def run_candidate(state: RunState, s: Searcher, cand: Candidate, ctx: dict, log) -> CandidateRecord:
    """Measure `cand` and judge it against the baseline (the first record; for the baseline, itself),
    the budget and the prediction the decision used; the searcher learns from the record."""
    pred = s.predict_level(cand)
    predicted = prediction_record(s, cand, pred)
    m = measure(state, cand, ctx)
    base = state.iterations[0].measured if state.iterations else m
    drift = paired_drift(m.bench, base.bench)
    budget = state.plan.target.budget
    checked, at_level_s = m.bench, None
    if budget.latency_fraction is not None and m.bench.get("paired"):
        checked = at_level(m.bench, drift)  # the budget's seconds are at the baseline's level
        at_level_s = latency_s(checked, budget)
    rec = CandidateRecord(
        m, ppl_ratio(m, base), predicted, drift,
        speed_level={"baseline": base.gguf_key, "tg_tps": base.bench["tg_tps"]["median"],
                     "pp_tps": base.bench["pp_tps"]["median"]},
        checks=check_budget(checked, budget),
        prediction_error_pct=errors_pct(at_measured_drift(predicted, drift, budget), m),
        absolute_prediction_error_pct=errors_pct(predicted, m), latency_at_level_s=at_level_s)
    state.iterations.append(rec)
    s.observe(cand, pred, rec)
    log(_line(rec))
    return rec


def try_candidate(state: RunState, s: Searcher, cand: Candidate, ctx: dict, log) -> None:
    """Build and measure a searched candidate. Its export gate failing (e.g. a -8L Q4_0 drifting
    0.603 nats from its F16) rejects that one candidate, not the whole plan: the search goes on
    without it and the rejection is in the manifest's search log."""
    try:
        run_candidate(state, s, cand, ctx, log)
    except ExportError as exc:
        s.measured[cand] = {"speed_ok": False, "quality_ok": False, "rejected": str(exc)}
        state.search_log.append(Rejection(cand.label(s.base), str(exc)))
        log(f"rejected {cand.label(s.base)}: {exc}")


def execute(plan: Plan, store: StepStore, log=print) -> RunState:
    """The plan's run-level steps in order (import, score, search, tasks); the search runs the
    candidate steps (measure) for the baseline and every candidate it picks."""
    r = plan.recipe
    state = RunState(plan, store, log=log, load_policy=LoadPolicy(r.bench.busy_retakes, r.bench.busy_wait_s))
    ctx: dict = {}
    for step in plan.steps:
        if not step.per_candidate:
            RUN_STEPS[step.name](state, ctx)
    return state


def _import(state: RunState, ctx: dict) -> None:
    ctx["hf_dir"], state.model_hash = import_model(state.store, state.plan.model, state.plan.allow_pickle)


def _score(state: RunState, ctx: dict) -> None:
    plan = state.plan
    ctx["stats"], score_res = score_depth(state.store, ctx["hf_dir"], state.model_hash, plan.recipe.depth.method,
                                          plan.recipe.calibration, max_remove=plan.max_removed,
                                          stream=plan.methods.get("stream", False))
    state.scores = score_res.meta["layer_scores"]


def _tasks(state: RunState, ctx: dict) -> None:
    delivered = (state.outcome.final or state.iterations[-1]).measured
    state.evaluation = evaluate_delivered(state.store, state.iterations[0].measured, delivered,
                                          state.plan.recipe.evaluate, state.plan.target.device.threads)


def _search(state: RunState, ctx: dict) -> None:
    """Baseline, then search -> measure -> recalibrate until the budget is met (or nothing is predicted to)."""
    plan, r, log, hf_dir = state.plan, state.plan.recipe, state.log, ctx["hf_dir"]
    text = eval_text(r.quality.path)
    ctx |= {"text": text, "text_hash": hashlib.sha256(text.encode()).hexdigest()}
    n_layers = json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"]
    s = make_searcher(state, hf_dir, ctx["stats"], n_layers)
    run_candidate(state, s, Candidate(quant=r.export.quant), ctx, log)
    if plan.target.budget.latency_fraction is not None:
        resolve_relative_budget(state, s, log)
    decision = None
    for _ in range(r.max_iterations):
        if _met(state):
            break
        decision = s.decide()
        state.search_log.append(decision.record())
        if decision.verdict != "try":
            break
        choice = decision.choice
        log(f"search: {choice.label} predicted latency {choice.latency_s:.3f}s, "
            f"ppl x{choice.ppl_ratio:.2f} (front of {len(decision.front)})")
        try_candidate(state, s, choice.cand, ctx, log)
    challenge_with_quant_only(state, s, ctx, log)
    state.outcome = _outcome(state, decision, s)


RUN_STEPS = {"import": _import, "score": _score, "search": _search, "tasks": _tasks}  # Step.name -> its runner


def challenge_with_quant_only(state: RunState, s: Searcher, ctx: dict, log) -> None:
    """Never ship a pruned model when a quant type alone meets the budget: when the best met
    candidate is pruned, measure every unmeasured full-depth quant type of the search that the cost
    model predicts to meet the budget (within the search noise); _outcome then keeps whichever met
    candidate has the lowest perplexity. Each challenge is logged in the search log."""
    met = _met(state)
    if not met:
        return
    best = _best(met)
    if not best.measured.pruned:
        return
    done = {it.measured.quant for it in state.iterations if not it.measured.pruned}
    done |= {c.quant for c in s.measured if not c.pruned}  # export-refused ones are in s.measured only
    for sc, measure_it in quant_only_challengers(s.score(), state.plan.recipe.search.quant_choices(), done,
                                                 state.plan.recipe.search.noise):
        if not measure_it:
            state.search_log.append(Challenge(sc.cand.label(s.base), sc.latency_s, best.checked_latency_s,
                                              measured=False, why="predicted to miss the budget"))
            continue
        log(f"check: would {sc.cand.label(s.base)} alone meet the budget with less loss? measuring it")
        try_candidate(state, s, sc.cand, ctx, log)
        state.search_log.append(Challenge(sc.cand.label(s.base), sc.latency_s, best.checked_latency_s, measured=True))


def resolve_relative_budget(state: RunState, s: Searcher, log) -> None:
    """budget.latency_fraction -> seconds, from the baseline just measured (the run's level). Candidates
    are then checked at that level through their paired measurement (run_candidate): on a device whose
    speed drifts, the check asks whether the model is that much faster, not whether the minute was."""
    base, b = state.iterations[0].measured, state.plan.target.budget
    state.plan.target = with_relative_latency(state.plan.target, base.latency_s)
    s.target = state.plan.target
    state.iterations[0] = replace(state.iterations[0], checks=check_budget(base.bench, state.plan.target.budget))
    log(f"budget: latency <= {b.latency_fraction:g} x the unpruned model's {base.latency_s:.3f} s = "
        f"{state.plan.target.budget.latency_s:.3f} s, candidates checked at the baseline's speed (paired)")


def _met(state: RunState) -> list[CandidateRecord]:
    return [it for it in state.iterations if it.met(state.plan.target.budget.max_ppl_ratio)]


def _best(met: list[CandidateRecord]) -> CandidateRecord:
    """The delivered one of the candidates that met the budget: the lowest perplexity, then the fewest layers removed."""
    return min(met, key=lambda it: (it.ppl_ratio, it.measured.k))


def _outcome(state: RunState, decision: Decision | None, s: Searcher) -> Outcome:
    budget = state.plan.target.budget
    met = _met(state)
    if met:
        best = _best(met)
        index = next(i for i, it in enumerate(state.iterations) if it is best)
        return Outcome(True, met_reason(best, budget), final=best, iteration=index)
    misses = {n: c for n, c in state.iterations[-1].checks.items() if not c["met"]}
    if decision is not None and decision.verdict == "infeasible":
        reason = infeasible_reason(s, decision, budget)
    else:
        reason = f"not met after {len(state.iterations) - 1} iterations"
    return Outcome(False, reason, misses=misses)


def met_reason(it: CandidateRecord, budget) -> str:
    """What the delivered model is and the numbers that met the budget, for the verdict line."""
    m = it.measured
    what = f"-{m.k} layers, {m.quant}" if m.k else f"the unpruned model, {m.quant},"
    checks = [f"{n} {c['measured']:.4g} {'<=' if c['kind'] == 'max' else '>='} {c['required']:.4g}"
              for n, c in it.checks.items()]
    checks.append(f"ppl ratio {it.ppl_ratio:.3f} <= {budget.max_ppl_ratio:g}")
    return f"{what} meets every constraint ({'; '.join(checks)})"


def infeasible_reason(s: Searcher, decision: Decision, budget) -> str:
    near = decision.closest
    lim = (f"no candidate with at most {s.max_removed} layers removed and quant in "
           f"{'/'.join(s.recipe.search.quant_choices())} is predicted to meet the budget within the quality floor "
           f"(ppl ratio <= {budget.max_ppl_ratio})")
    if near is None:
        return lim
    name, ratio = max(near.shortfall.items(), key=lambda kv: kv[1])
    return (f"{lim}; closest: {near.label} (predicted latency {near.latency_s:.3f} s, ppl x{near.ppl_ratio:.2f}), "
            f"which still misses {name} by {100 * (ratio - 1):.0f} %; it would need a faster device, a looser "
            f"budget or a quality floor above x{near.ppl_ratio:.2f}")


def _line(it: CandidateRecord) -> str:
    m = it.measured
    checks = ", ".join(f"{n} {c['measured']:.3g}/{c['required']:.3g} {'ok' if c['met'] else 'MISS'}"
                       for n, c in it.checks.items())
    err, absolute, drift = it.prediction_error_pct, it.absolute_prediction_error_pct, it.drift.get("tg_tps", 1.0)
    pred = (f" [pred err tg {err['tg_tps']:+.1f}% at drift x{drift:.2f}, absolute {absolute['tg_tps']:+.1f}%]"
            if "tg_tps" in err and "tg_tps" in absolute else "")
    return (f"k={m.k:>2} {m.quant} layers={m.layers:>2} size={m.gguf_bytes / 1e6:.1f} MB "
            f"tg={m.bench['tg_tps']['median']:.1f} tok/s pp={m.bench['pp_tps']['median']:.1f} tok/s "
            f"latency={m.latency_s:.3f}s ppl={m.ppl['ppl']:.2f} (x{it.ppl_ratio:.3f}){pred} | {checks}")
