"""A benchmark taken while the machine is oversubscribed never drives a decision.

A run started under load 7 on 2 cores measured the unpruned baseline at 1.6 tok/s, 40x below its
level, and planned from that number (issue 14). Two signs mark such a measurement:

* the 1-minute load average, read just before the benchmark, is above the number of cores
  (only for runners that measure this machine: this host's load says nothing about an ssh device);
* a paired measurement's reference (the run's baseline GGUF, measured in the same process) ran
  far below the speed the baseline had when it set the run's level (drift < SLOW_DRIFT): the
  machine was slow during that minute, whatever the load average says.

Such a benchmark is retaken after a wait (the load average needs about a minute to fall), at most
`retakes` times; if every try is oversubscribed the run stops with one line saying why. The wait
and the load reading are injected, so tests need no real load or timing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from edgeprune.errors import MachineBusyError

SLOW_DRIFT = 0.5  # the reference under half the run's level: the machine, not the model, was slow


@dataclass(frozen=True)
class LoadPolicy:
    retakes: int = 3
    wait_s: float = 60.0
    slow_drift: float = SLOW_DRIFT
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)


def overload_reason(load1: float | None, cores: int) -> str | None:
    if load1 is not None and load1 > cores:
        shown = f"{load1:.1f}" if round(load1, 1) > cores else f"{load1:.2f}"  # never "2.0 above the 2 cores"
        return f"load average {shown} above the {cores} cores"
    return None


def slow_reason(drift_tg: float | None, policy: LoadPolicy) -> str | None:
    if drift_tg is not None and drift_tg < policy.slow_drift:
        return (f"the baseline measured alongside ran at {drift_tg:.2f}x the run's level "
                f"(below {policy.slow_drift:g}x)")
    return None


def busy_reason(bench: dict, drift_tg: float | None, on_this_machine: bool, policy: LoadPolicy) -> str | None:
    """Why `bench` may not drive a decision (None: it may). Synthetic (fake runner) numbers always may."""
    if not bench.get("measured", True):
        return None
    load = overload_reason(bench.get("loadavg"), policy.cores) if on_this_machine else None
    return load or slow_reason(drift_tg, policy)


def load_now_reason(on_this_machine: bool, policy: LoadPolicy, read_load=lambda: os.getloadavg()[0]) -> str | None:
    """Why measuring now would be wasted (None: go ahead): this machine's load is above its cores."""
    return overload_reason(read_load(), policy.cores) if on_this_machine else None


def guarded_benchmark(take: Callable[[int], dict], reason: Callable[[dict], str | None], label: str,
                      policy: LoadPolicy, log=print, sleep: Callable[[float], None] = time.sleep,
                      busy_now: Callable[[], str | None] = lambda: None) -> dict:
    """`take(attempt)`: the benchmark (attempt 0 may come from the cache; a retake must measure anew).
    Returns the first benchmark with no busy reason, recording the retakes and why. Before every try
    `busy_now()` is asked (after the wait, for a retake): while the machine is oversubscribed the try is
    spent waiting, not on a measurement that would be refused. Raises MachineBusyError when every try was busy."""
    busy = busy_now()  # under load 5 on 2 cores one benchmark took 9 min, only to be refused
    bench, why = ({}, f"{busy}, not measured") if busy is not None else _try(take, 0, reason)
    if why is None:
        return bench
    reasons = [why]
    for attempt in range(1, policy.retakes + 1):
        log(f"benchmark of {label} not used ({reasons[-1]}); retaking in {policy.wait_s:.0f} s "
            f"({attempt}/{policy.retakes})")
        sleep(policy.wait_s)
        still = busy_now()
        if still is not None:
            reasons.append(f"{still}, not measured")
            continue
        bench, why = _try(take, attempt, reason)
        if why is None:
            return bench | {"retaken_because": reasons}
        reasons.append(why)
    raise MachineBusyError(
        f"every benchmark of {label} ran on an oversubscribed machine ({len(reasons)} tries over "
        f"{policy.retakes * policy.wait_s / 60:.0f} min; last: {reasons[-1]})",
        where="this machine",
        fix="rerun when it is quieter (finished steps are kept), or stop what else is running")


def _try(take: Callable[[int], dict], attempt: int, reason: Callable[[dict], str | None]) -> tuple[dict, str | None]:
    """One benchmark and why it may not be used. A runner that refuses its own measurement as taken on a
    busy machine (MachineBusyError, e.g. repetitions too far apart) is a busy try like the others."""
    try:
        bench = take(attempt)
    except MachineBusyError as exc:
        return {}, exc.what
    return bench, reason(bench)
