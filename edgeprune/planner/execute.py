"""Run a Plan: baseline, then measured iterations of depth pruning until the budget is met."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune import registry
from edgeprune.data import eval_text
from edgeprune.planner.plan import Plan
from edgeprune.planner.search import Point, layer_cost_share, next_k
from edgeprune.runner import StepStore
from edgeprune.stages.bench import benchmark, check_budget, latency_s
from edgeprune.stages.evaluate import evaluate_ppl
from edgeprune.stages.export import export_gguf
from edgeprune.stages.load import import_model
from edgeprune.stages.prune import prune_layers
from edgeprune.stages.score import score_depth


@dataclass
class RunState:
    plan: Plan
    store: StepStore
    started: float = field(default_factory=time.time)
    model_hash: str = ""
    scores: list[float] = field(default_factory=list)
    iterations: list[dict] = field(default_factory=list)
    outcome: dict = field(default_factory=dict)


def measure(state: RunState, k: int, hf_dir: Path, hf_hash: str, stats, text: str, text_hash: str) -> dict:
    plan, store, r = state.plan, state.store, state.plan.recipe
    method = registry.get("depth", r.depth.method)
    remove = method.select(stats, k) if k else []
    pruned_dir, pruned_key = prune_layers(store, hf_dir, hf_hash, remove)
    gguf, export_meta = export_gguf(store, pruned_dir, pruned_key, r.export)
    gguf_key = f"{pruned_key}:{r.export.quant}"
    bench = benchmark(store, gguf, gguf_key, plan.target, r.bench.repetitions, r.bench.warmup)
    ppl = evaluate_ppl(store, gguf, gguf_key, text, text_hash, r.quality.ctx, r.quality.windows)
    checks = check_budget(bench, plan.target.budget)
    it = {"k": k, "removed_layers": remove, "layers": export_meta["layers"], "gguf": str(gguf),
          "gguf_bytes": export_meta["bytes"], "verify": export_meta["verify"], "bench": bench,
          "latency_s": latency_s(bench, plan.target.budget), "ppl": ppl, "checks": checks}
    state.iterations.append(it)
    return it


def quality_ok(state: RunState, it: dict) -> tuple[bool, float]:
    ratio = it["ppl"]["ppl"] / state.iterations[0]["ppl"]["ppl"]
    it["ppl_ratio"] = ratio
    return ratio <= state.plan.target.budget.max_ppl_ratio, ratio


def execute(plan: Plan, store: StepStore, log=print) -> RunState:
    state = RunState(plan, store)
    r = plan.recipe
    hf_dir, state.model_hash = import_model(store, plan.model, plan.allow_pickle)
    stats, score_res = score_depth(store, hf_dir, state.model_hash, r.depth.method, r.calibration,
                                   max_remove=plan.max_removed)
    state.scores = score_res.meta["layer_scores"]
    text = eval_text(r.quality.path)
    text_hash = hashlib.sha256(text.encode()).hexdigest()
    base = measure(state, 0, hf_dir, state.model_hash, stats, text, text_hash)
    quality_ok(state, base)
    log(_line(base))
    share = layer_cost_share(plan.model_config)
    max_k = plan.max_removed if plan.max_removed is not None else base["layers"] - 1
    history = [Point(0, base["checks"])]
    for _ in range(r.max_iterations):
        verdict, k = next_k(history, share, max_k)
        if verdict != "try":
            break
        it = measure(state, k, hf_dir, state.model_hash, stats, text, text_hash)
        ok, _ = quality_ok(state, it)
        log(_line(it))
        history.append(Point(k, it["checks"], ok))
    else:
        verdict, k = next_k(history, share, max_k)
    state.outcome = _outcome(state, verdict, k)
    return state


def _outcome(state: RunState, verdict: str, k: int) -> dict:
    budget = state.plan.target.budget
    met = [it for it in state.iterations if all(c["met"] for c in it["checks"].values())
           and it.get("ppl_ratio", 1.0) <= budget.max_ppl_ratio]
    if met:
        best = min(met, key=lambda it: it["k"])
        return {"met": True, "chosen_k": best["k"], "reason": "budget met", "final": best}
    last = state.iterations[-1]
    misses = {n: c for n, c in last["checks"].items() if not c["met"]}
    if verdict == "quality_floor":
        broken = min((it for it in state.iterations if it.get("ppl_ratio", 1) > budget.max_ppl_ratio),
                     key=lambda it: it["k"])
        reason = (f"the budget needs ~{k} layers removed, but removing {broken['k']} already breaks the quality "
                  f"floor (ppl ratio {broken['ppl_ratio']:.3f} > {budget.max_ppl_ratio})")
    elif verdict == "infeasible":
        reason = f"the budget needs ~{k} layers removed, more than the allowed {state.plan.max_removed}"
    else:
        reason = f"not met after {len(state.iterations) - 1} iterations"
    return {"met": False, "chosen_k": None, "reason": reason, "misses": misses, "final": None}


def _line(it: dict) -> str:
    checks = ", ".join(f"{n} {c['measured']:.3g}/{c['required']:.3g} {'ok' if c['met'] else 'MISS'}"
                       for n, c in it["checks"].items())
    return (f"k={it['k']:>2} layers={it['layers']:>2} size={it['gguf_bytes'] / 1e6:.1f} MB "
            f"tg={it['bench']['tg_tps']['median']:.1f} tok/s pp={it['bench']['pp_tps']['median']:.1f} tok/s "
            f"latency={it['latency_s']:.3f}s ppl={it['ppl']['ppl']:.2f} (x{it.get('ppl_ratio', 1):.3f}) | {checks}")
