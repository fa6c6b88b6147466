"""Benchmark stage: measure a GGUF on the target's runner; derive the budget's quantities."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeprune.config.target import Budget, Target
from edgeprune.devices import BenchSpec, get_runner
from edgeprune.devices.runners import runner_spec
from edgeprune.store import StepStore


def latency_s(bench: dict, budget: Budget) -> float:
    """Time to answer: prefill the prompt, then decode the answer (median speeds)."""
    return budget.prompt_tokens / bench["pp_tps"]["median"] + budget.answer_tokens / bench["tg_tps"]["median"]


def check_budget(bench: dict, budget: Budget) -> dict:
    """Every constraint of the budget: required, measured, met."""
    checks = {}
    if budget.latency_s is not None:
        checks["latency_s"] = (budget.latency_s, latency_s(bench, budget), "max")
    if budget.decode_tps is not None:
        checks["decode_tps"] = (budget.decode_tps, bench["tg_tps"]["median"], "min")
    if budget.max_ram_gb is not None:
        checks["peak_ram_gb"] = (budget.max_ram_gb, bench["peak_rss_bytes"] / 1e9, "max")
    if budget.max_file_gb is not None:
        checks["file_gb"] = (budget.max_file_gb, bench["model_bytes"] / 1e9, "max")
    out = {}
    for name, (req, got, kind) in checks.items():
        met = got <= req if kind == "max" else got >= req
        out[name] = {"required": req, "measured": round(got, 4), "kind": kind, "met": met}
    return out


def benchmark(store: StepStore, gguf: Path, gguf_key: str, target: Target, reps: int, warmup: int,
              session: int | None = None, reference: tuple[Path, str] | None = None, retake: int = 0) -> dict:
    """`session`: a run that re-measures a stale cached benchmark (planner/drift.py) keys it by its start.
    `retake`: > 0 when planner/load_guard.py refused an oversubscribed measurement: always measured anew.
    `reference`: (GGUF, its key) measured interleaved with `gguf` in the same process (devices/runners.py)."""
    capabilities = runner_spec(target.device.runner)
    evict_mb = target.device.evict_llc_mb if capabilities.cache_eviction else 0  # not asked of a runner that cannot
    spec = BenchSpec(target.budget.prompt_tokens, target.budget.answer_tokens, reps, warmup, target.device.threads,
                     evict_mb)
    runner = get_runner(target.device.runner, target.device)

    def build(out: Path) -> dict:
        load = os.getloadavg()[0]  # before the run: the contention the measurement starts under
        paired = {"reference": reference[0]} if reference else {}
        return runner(gguf, spec, **paired) | {"measured_at": time.time(), "loadavg": load}

    # protocol: bump when the worker's measurement changes, so stale numbers are not reused
    # (4: repetitions spread beyond bench_worker.SPREAD_MAX are retaken, and refused if they stay apart)
    key = {"gguf": gguf_key, "spec": spec.__dict__, "runner": target.device.runner, "protocol": 4}
    if target.device.allow_foreign_arch and target.device.arch != "any":  # labelled apart (devices/runners.py)
        key["foreign_arch_for"] = target.device.arch
    if capabilities.remote:  # another remote is another device
        key["ssh_host"] = f"{target.device.ssh_host}:{target.device.ssh_port}"
    if session is not None:
        key["session"] = session
    if retake:
        key["retake"] = f"{retake}@{time.time():.3f}"
    if reference is not None:
        key["reference"] = reference[1]
    return store.run("bench", key, build).meta
