"""The worker: one candidate through the plan's candidate steps (prune, width, heal, recover, export,
bench, ppl, kld; planner/steps.py), every step cached in the step store, into a Measurement.

The benchmark is taken paired with the baseline GGUF where the runner pairs and both files fit
(planner/drift.py), and retaken while the machine is oversubscribed (planner/load_guard.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune import registry
from edgeprune.devices.runners import runner_spec
from edgeprune.planner.drift import fresh_benchmark, paired_drift, session_start
from edgeprune.planner.load_guard import busy_reason, guarded_benchmark, load_now_reason
from edgeprune.planner.methods import width_name
from edgeprune.report.records import Measurement
from edgeprune.stages.bench import latency_s
from edgeprune.stages.evaluate import evaluate_kld, evaluate_ppl
from edgeprune.stages.export import export_gguf
from edgeprune.stages.prune import prune_layers
from edgeprune.stages.width_step import prune_width_step
from edgeprune.targets.costmodel import Candidate

if TYPE_CHECKING:
    from edgeprune.planner.execute import RunState

PAIR_RAM_SHARE = 0.5  # pair a candidate with the baseline only when both files fit in this share of device RAM


@dataclass
class Build:
    """One candidate's artifacts as its steps make them: the model folder and its store key (each step
    replaces them with its output), then the GGUF and its measurements."""
    cand: Candidate
    removed: list[int] = field(default_factory=list)
    dir: Path | None = None
    key: str = ""
    heal: dict | None = None
    recovery: dict | None = None
    gguf: Path | None = None
    gguf_key: str = ""
    export_meta: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)
    ppl: dict = field(default_factory=dict)
    kld: dict | None = None


def _prune(state: RunState, b: Build, ctx: dict) -> None:
    method = registry.get("depth", state.plan.recipe.depth.method)
    k = b.cand.layers_removed
    b.removed = method.select(ctx["stats"], k) if k else []
    b.dir, b.key = prune_layers(state.store, ctx["hf_dir"], state.model_hash, b.removed)


def _width(state: RunState, b: Build, ctx: dict) -> None:
    c, r = b.cand, state.plan.recipe
    if c.heads is not None or c.ffn is not None:
        b.dir, b.key = prune_width_step(state.store, b.dir, b.key, c.heads, c.kv_heads, c.ffn, r.calibration,
                                        r.width.method)


def _heal(state: RunState, b: Build, ctx: dict) -> None:
    if b.key != state.model_hash:  # heal only what was pruned
        from edgeprune.stages.heal_step import heal_step

        b.dir, b.key, b.heal = heal_step(state.store, ctx["hf_dir"], state.model_hash, b.dir, b.key, b.removed,
                                         state.plan.recipe.heal)


def _recover(state: RunState, b: Build, ctx: dict) -> None:
    if b.key != state.model_hash:  # recover only what was pruned
        from edgeprune.stages.recover import recover_stage

        b.dir, b.key, b.recovery = recover_stage(state.store, b.dir, b.key, state.plan.recipe.recovery,
                                                 teacher_dir=ctx["hf_dir"])


def _export(state: RunState, b: Build, ctx: dict) -> None:
    export_cfg = state.plan.recipe.export.model_copy(update={"quant": b.cand.quant})
    b.gguf, b.export_meta = export_gguf(state.store, b.dir, b.key, export_cfg)
    b.gguf_key = f"{b.key}:{b.cand.quant}"


def _bench(state: RunState, b: Build, ctx: dict) -> None:
    b.bench = guarded_bench(state, b.gguf, b.gguf_key, b.cand)


def _ppl(state: RunState, b: Build, ctx: dict) -> None:
    q = state.plan.recipe.quality
    b.ppl = evaluate_ppl(state.store, b.gguf, b.gguf_key, ctx["text"], ctx["text_hash"], q.ctx, q.windows,
                         state.plan.target.device.threads)


def _kld(state: RunState, b: Build, ctx: dict) -> None:
    q = state.plan.recipe.quality
    b.kld = evaluate_kld(state.store, b.gguf, b.gguf_key, ctx["hf_dir"], state.model_hash, ctx["text"],
                         ctx["text_hash"], q.ctx, q.windows, state.plan.target.device.threads)


CANDIDATE_STEPS = {"prune": _prune, "width": _width, "heal": _heal, "recover": _recover, "export": _export,
                   "bench": _bench, "ppl": _ppl, "kld": _kld}  # Step.name -> what runs it (planner/steps.py)


def measure(state: RunState, cand: Candidate, ctx: dict) -> Measurement:
    """The plan's candidate steps for one candidate (prune -> ... -> perplexity; every step cached)."""
    b = Build(cand)
    for step in state.plan.steps:
        if step.per_candidate:
            CANDIDATE_STEPS[step.name](state, b, ctx)
    r, target = state.plan.recipe, state.plan.target
    return Measurement(cand, b.removed, b.export_meta["layers"], str(b.gguf), b.gguf_key, b.export_meta["bytes"],
                       b.export_meta["verify"], b.bench, latency_s(b.bench, target.budget), b.ppl,
                       measured_where(target, b.bench),
                       width_method=width_name(r.width.method) if cand.heads or cand.ffn else None,
                       heal=b.heal, recovery=b.recovery, kld=b.kld)


def guarded_bench(state: RunState, gguf: Path, gguf_key: str, cand: Candidate) -> dict:
    """The candidate's benchmark, retaken while the machine is oversubscribed (planner/load_guard.py):
    the load is above the cores, or the baseline measured alongside ran far below the run's level."""
    plan, r = state.plan, state.plan.recipe
    runner = runner_spec(plan.target.device.runner)
    reference = _reference(state, gguf) if runner.pairing else None  # unpaired: its drift is unknown
    level = state.iterations[0].measured.bench if state.iterations else None
    here = runner.on_this_machine

    def take(attempt: int) -> dict:
        return fresh_benchmark(state.store, gguf, gguf_key, plan.target, r.bench.repetitions, r.bench.warmup,
                               session_start(plan.out), reference=reference, retake=attempt)

    def reason(bench: dict) -> str | None:
        drift = paired_drift(bench, level)["tg_tps"] if level is not None and bench.get("reference") else None
        return busy_reason(bench, drift, here, state.load_policy)

    label = "the unpruned model" if not state.iterations else f"-{cand.layers_removed} layers {cand.quant}"
    return guarded_benchmark(take, reason, label, state.load_policy, log=state.log,
                             busy_now=lambda: load_now_reason(here, state.load_policy))


def _reference(state: RunState, gguf: Path) -> tuple[Path, str] | None:
    """The baseline GGUF a candidate is measured with (none for the baseline itself, and none when
    both files would not fit in half the device's RAM: pairing holds the two models at once, which an
    8B baseline plus its candidate on a 16 GB device cannot; such a candidate is measured unpaired and
    its drift is unknown, which the manifest shows as a missing `bench.paired`)."""
    if not state.iterations or Path(state.iterations[0].measured.gguf) == Path(gguf):
        return None
    first = state.iterations[0].measured
    base = Path(first.gguf)
    if base.stat().st_size + Path(gguf).stat().st_size > PAIR_RAM_SHARE * state.plan.target.device.ram_gb * 1e9:
        return None
    return base, first.gguf_key


def measured_where(target, bench: dict) -> dict:
    host = bench.get("host") or {}
    return {"kind": "measured" if bench.get("measured", True) else "synthetic (fake runner)",
            "runner": bench.get("runner", target.device.runner), "ssh_host": target.device.ssh_host,
            "cpu_model": host.get("cpu_model"), "threads": bench.get("n_threads"),
            "at": _utc(bench.get("measured_at")), "loadavg": bench.get("loadavg"),
            "reused_cached_measurement": bench.get("reused_cached_measurement"),
            "remeasured_because": bench.get("remeasured_because")}


def _utc(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
