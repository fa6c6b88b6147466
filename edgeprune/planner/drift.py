"""When a cached benchmark may stand next to one measured now, and re-measuring when it may not.

The planner calibrates its cost model on the ratio of a candidate's speed to the baseline's. On a
shared CPU, absolute speed follows the machine's load: a baseline measured at 08:27 under load 12
and a candidate at 08:40 under load 2 gave a "2.1x speed-up" for a model reading 17 % fewer bytes
(bench/README, Planner). So a benchmark cached by an earlier run is reused only if it is recent
(MAX_AGE_S) and, on the local runner, was taken under the same contention as now; otherwise this
run measures that GGUF again, under a step key that names the run, so a resumed run reuses the
re-measurement instead of measuring a third time.

Why these rules: load changes on a time scale of minutes, so an age limit alone would have to be
very short to be safe and would re-measure almost everything; a load check alone misses a device
that was changed (thermal state, frequency governor, other tenants on a remote). Contention is
compared as the expected slowdown of the benchmark's threads, max(1, (load + threads) / cores):
a change of more than LOAD_TOLERANCE (the 10 % the cost model is asked to predict within) is
another load state. Below `cores - threads` the benchmark has free cores and the load does not
matter, which keeps an idle machine's small load wiggles from triggering re-measurements. The fake
runner's numbers are synthetic and never drift; for ssh only the age rule applies (this host's
load says nothing about the remote's).

Pairing (`paired_drift`, `at_drift`): the rules above cannot make two benchmarks taken minutes apart
comparable when the machine itself drifts 10-25 % while idle (bench/README, Planner). So every
searched candidate is measured interleaved with the run's baseline GGUF in one process; the
baseline's own measurement is the run's speed *level*, and drift = reference-now / level says how
fast the machine ran in the candidate's minute. The calibration sees measured / drift (the speed
at the level), predictions are made at the level and scaled by the latest drift.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from edgeprune.devices.runners import runner_spec
from edgeprune.store.resume import START
from edgeprune.stages.bench import benchmark

MAX_AGE_S = 900.0
LOAD_TOLERANCE = 0.10


def contention(load1: float, threads: int, cores: int) -> float:
    """Expected slowdown of a `threads`-thread benchmark when `load1` other tasks are runnable."""
    return max(1.0, (load1 + threads) / max(1, cores))


def session_start(out: Path) -> float | None:
    """When this run first started (its calibration snapshot survives kills, goes when it finishes)."""
    marker = Path(out) / START
    return marker.stat().st_mtime if marker.is_file() else None


def stale_reason(meta: dict, runner: str, threads: int, now: float, load_now: float, cores: int,
                 started: float | None) -> str | None:
    """Why a cached measurement cannot be compared with measurements taken now (None: it can)."""
    spec = runner_spec(runner)
    if not spec.real:
        return None
    at = meta.get("measured_at")
    if at is None:
        return "cached without a measurement time"
    if started is not None and at >= started - 1.0:
        return None  # this run measured it (before a kill): keep it, so a resume decides the same
    if now - at > MAX_AGE_S:
        return f"measured {(now - at) / 60:.0f} min ago (limit {MAX_AGE_S / 60:.0f} min)"
    then = meta.get("loadavg")
    if spec.on_this_machine and then is not None:  # the load average is this machine's
        c_then, c_now = contention(then, threads, cores), contention(load_now, threads, cores)
        if abs(c_then / c_now - 1.0) > LOAD_TOLERANCE:
            return (f"load average {then:.1f} then vs {load_now:.1f} now on {cores} cores "
                    f"(expected slowdown x{c_then:.2f} vs x{c_now:.2f})")
    return None


NO_DRIFT = {"tg_tps": 1.0, "pp_tps": 1.0}


def paired_drift(bench: dict, level: dict) -> dict:
    """Speed of the machine during `bench` over its speed when `level` (the run's baseline
    benchmark) was taken, per test: the paired reference's speed / the level's median. An
    unpaired benchmark (the baseline itself) defines the level: no drift."""
    ref = bench.get("reference")
    if ref is None:
        return dict(NO_DRIFT)
    ratios = bench.get("paired") or {}
    out = {}
    for k in NO_DRIFT:
        ratio = ratios.get(k.replace("_tps", "_ratio"))
        # measured / drift must equal level x the median per-repetition ratio, the estimate that the
        # machine's second-to-second wander moves least (a ratio of two medians mixes repetitions)
        out[k] = (bench[k]["median"] / (ratio["median"] * level[k]["median"]) if ratio
                  else ref[k]["median"] / level[k]["median"])
    return out


def at_level(bench: dict, drift: dict) -> dict:
    """`bench` as the machine would have measured it at the run's level: pp/tg medians / drift. A
    relative latency budget (budget.latency_fraction) is checked on this, since its seconds were
    derived from the baseline's measurement at the level."""
    return bench | {k: {**bench[k], "median": bench[k]["median"] / drift[k]} for k in NO_DRIFT}


def at_drift(pred, drift: dict):
    """A level-scale Prediction as it would be measured at `drift` (speeds scaled, sizes unchanged)."""
    return replace(pred, tg_tps=pred.tg_tps * drift["tg_tps"], pp_tps=pred.pp_tps * drift["pp_tps"])


def fresh_benchmark(store, gguf: Path, gguf_key: str, target, reps: int, warmup: int, started: float | None,
                    reference: tuple[Path, str] | None = None, retake: int = 0) -> dict:
    """The GGUF's benchmark, measured in this run's load state; says whether it was reused or re-measured.
    `reference`: (GGUF, key) to measure interleaved with it (see paired_drift). A cached paired benchmark
    keeps its ratio whatever its age, but its absolute numbers (which the budget checks) follow the rules above.
    `retake` > 0: measure anew, whatever is cached (planner/load_guard.py refused the last one)."""
    t0 = time.time()
    bench = dict(benchmark(store, gguf, gguf_key, target, reps, warmup, reference=reference, retake=retake))
    reused = bench.get("measured_at") is None or bench["measured_at"] < t0
    reason = None
    if reused:
        threads = target.device.threads or os.cpu_count() or 1
        reason = stale_reason(bench, target.device.runner, threads, time.time(), os.getloadavg()[0],
                              os.cpu_count() or 1, started)
        if reason is not None:
            bench = dict(benchmark(store, gguf, gguf_key, target, reps, warmup, session=round(started or t0),
                                   reference=reference))
            reused = bench["measured_at"] < t0
    bench["reused_cached_measurement"] = reused
    bench["remeasured_because"] = reason
    return bench
