"""Runners measure a GGUF on a device and return llama-bench-shaped JSON.

Every runner takes an optional `reference` GGUF: the two are then measured interleaved in one
process (bench_worker.run_paired), and the result carries the reference's numbers and the
per-pair candidate/reference ratios, which the machine's speed drift does not move.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeprune import registry
from edgeprune.errors import ConfigError, MachineBusyError, ToolchainError


@dataclass(frozen=True)
class BenchSpec:
    prompt_tokens: int
    gen_tokens: int
    repetitions: int = 3
    warmup: int = 1
    threads: int | None = None
    evict_mb: int = 0  # device.evict_llc_mb: read this much memory before each timed step (bench_worker)


@dataclass(frozen=True)
class RunnerSpec:
    """A benchmark runner and its capabilities: callers ask these flags, never the runner's name."""

    name: str
    measure: Callable[..., dict]   # (gguf, BenchSpec, reference=None) -> llama-bench-shaped dict
    summary: str
    on_this_machine: bool = False  # measures the machine edgeprune runs on: its arch, load average, CPU model
    remote: bool = False           # measures a device over ssh: needs device.ssh_host; bound to the device section
    pairing: bool = True           # measures a candidate interleaved with a reference GGUF (bench_worker.run_paired)
    cache_eviction: bool = False   # honours BenchSpec.evict_mb (device.evict_llc_mb)
    real: bool = True              # its numbers are measurements (false: synthetic, never stale)
    untagged_files: bool = False   # calibration files without a runner tag (the default runner's predate tags)


def runner(name: str, summary: str, **capabilities: bool) -> Callable:
    """Register the decorated function as runner `name`; the function itself is returned unchanged."""
    def deco(measure: Callable[..., dict]) -> Callable[..., dict]:
        registry.register("runner", name)(RunnerSpec(name, measure, summary, **capabilities))
        return measure
    return deco


def runner_spec(name: str, where: str = "device.runner") -> RunnerSpec:
    """The registered runner `name`; a typo answers "did you mean"."""
    return registry.get("runner", name, where=where)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def host_arch() -> str:
    """This machine's architecture in the targets' spelling (x86_64, aarch64)."""
    m = platform.machine().lower()
    return ARCH_ALIASES.get(m, m)


def host_info() -> dict:
    return {"cpu_model": cpu_model(), "arch": host_arch(), "cores": os.cpu_count(),
            "os": platform.platform()}


def foreign_arch_label(device) -> str | None:
    """None when a runner that measures on this machine measures the target's own architecture;
    else the label every number then carries. Raises (exit 2) unless device.allow_foreign_arch."""
    arch, here = getattr(device, "arch", "any"), host_arch()
    if arch in ("any", here):
        return None
    if not getattr(device, "allow_foreign_arch", False):
        raise ConfigError(f"the target's device.arch is {arch} but the local runner would measure on this {here} "
                          "machine", where="device.arch",
                          fix="run on the device (runner: ssh, or edgeprune there), use a target with arch: any, "
                              "or pass --allow-foreign-arch to measure here with every number labelled")
    return f"measured on {here} host, not on the target ({arch})"


def check_runner_arch(runner_name: str, device) -> str | None:
    """foreign_arch_label for runners that measure on this machine (their spec says so); None otherwise."""
    return foreign_arch_label(device) if runner_spec(runner_name).on_this_machine else None


@runner("local", "llama-cpp-python in a subprocess on this machine", on_this_machine=True, cache_eviction=True,
        untagged_files=True)
def run_local(gguf: Path, spec: BenchSpec, reference: Path | None = None) -> dict:
    threads = spec.threads or os.cpu_count() or 1
    cmd = [sys.executable, "-m", "edgeprune.devices.bench_worker", str(gguf), str(spec.prompt_tokens),
           str(spec.gen_tokens), str(spec.repetitions), str(spec.warmup), str(threads)]
    if reference is not None:
        cmd.append(str(reference))
    if spec.evict_mb:
        cmd.append(f"--evict-mb={spec.evict_mb}")
    # stderr passes through so the worker's progress bar shows; stdout carries the JSON
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        raise ToolchainError(f"benchmark worker exited with {res.returncode} (its error is printed above)",
                             where=str(gguf), fix="check the GGUF loads with `edgeprune eval --model FILE`")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out.update({"runner": "local", "measured": True, "host": host_info()})
    return check_spread(out, str(gguf))


def check_spread(result: dict, where: str) -> dict:
    """Refuse a measurement whose repetitions still disagreed after the worker retook them
    (bench_worker.SPREAD_MAX): raising here keeps it out of the step store, the calibration and
    the manifest, so a rerun measures again instead of reusing it."""
    spread = result.get("spread") or {}
    if spread.get("ok", True):
        return result
    inf = float("inf")
    series = [k for k in ("tg", "pp", "tg_ratio", "pp_ratio") if k in spread]  # decode named first on a tie
    worst = max(series, key=lambda k: inf if spread[k] is None else spread[k])
    stats = result.get("paired", {}).get(worst, {}) if worst.endswith("_ratio") else result.get(f"{worst}_tps", {})
    shown = "/".join(f"{v:.3g}" for v in stats.get("samples", []))
    ratio = inf if spread[worst] is None else spread[worst]
    # A busy machine, not a broken model: the planner's load guard retakes it, then stops with exit 3.
    raise MachineBusyError(f"benchmark repetitions disagree: {worst} {shown} (fastest/slowest {ratio:.1f} > "
                         f"{spread.get('bound')}) after {spread.get('retaken', 0)} retaken", where=where,
                         fix="the machine was too busy to measure; rerun when it is quieter (nothing was cached)")


@runner("fake", "synthetic numbers from the file size, for tests", real=False)
def run_fake(gguf: Path, spec: BenchSpec, reference: Path | None = None) -> dict:
    """Deterministic numbers from file size, for tests: speed ~ 1 / bytes, like a memory-bound decode.
    With a reference: the reference's numbers by the same law and exact ratios (a machine that never drifts)."""
    out = _fake_numbers(gguf, spec)
    if reference is not None:
        ref = _fake_numbers(reference, spec)
        out["reference"] = {"model": reference.name, "model_bytes": ref["model_bytes"], "pp_tps": ref["pp_tps"],
                            "tg_tps": ref["tg_tps"]}
        out["paired"] = {"order": "ABBA", "pairs": spec.repetitions, "asked_pairs": spec.repetitions, "converged": True,
                         **{f"{k}_ratio": _fake_stat(out[f"{k}_tps"]["median"] / ref[f"{k}_tps"]["median"],
                                                     spec.repetitions) | {"rse": 0.0} for k in ("pp", "tg")}}
    return out


def _fake_stat(v: float, n: int) -> dict:
    return {"median": v, "mean": v, "stdev": 0.0, "min": v, "max": v, "samples": [v] * n}


def _fake_numbers(gguf: Path, spec: BenchSpec) -> dict:
    size = gguf.stat().st_size
    tg = 2.0e9 / size
    return {"n_prompt": spec.prompt_tokens, "n_gen": spec.gen_tokens, "repetitions": spec.repetitions,
            "warmup": spec.warmup, "n_threads": spec.threads or 1, "load_s": 0.0,
            "pp_tps": _fake_stat(10 * tg, spec.repetitions), "tg_tps": _fake_stat(tg, spec.repetitions),
            "peak_rss_bytes": int(size * 1.2), "model_bytes": size,
            "runner": "fake", "measured": False, "host": {"cpu_model": "fake"}}


@runner("ssh", "bench_worker on device.ssh_host over ssh", remote=True, cache_eviction=True)
def run_ssh(gguf: Path, spec: BenchSpec, device=None, reference: Path | None = None) -> dict:
    """Benchmark on a remote over ssh (devices/ssh.py); `device` is the target's device section."""
    from edgeprune.devices.ssh import run_ssh as _run_ssh
    from edgeprune.errors import ConfigError

    if device is None or not getattr(device, "ssh_host", None):
        raise ConfigError("the ssh runner needs device.ssh_host", where="target device", fix="set ssh_host: user@host")
    return _run_ssh(gguf, spec, device, reference)


def get_runner(name: str, device=None):
    """The runner callable (gguf, spec, reference=None) -> dict; a remote one is bound to the target's device
    section. With a device, a runner that measures this machine refuses a target of another arch, or (with
    device.allow_foreign_arch) labels its every result "measured on <arch> host, not on the target"."""
    import functools

    spec = runner_spec(name)
    bound = functools.partial(spec.measure, device=device) if spec.remote else spec.measure
    label = check_runner_arch(name, device) if device is not None else None
    if label is None:
        return bound

    def labelled(*args, **kwargs) -> dict:
        return bound(*args, **kwargs) | {"foreign_arch": label}
    return labelled
