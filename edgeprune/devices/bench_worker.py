"""Runs in its own process so peak RSS is the model's, not the planner's.

Shaped like llama-bench: a prompt-processing test (pp) and a token-generation test (tg), each
repeated, with warm-up. Prompt tokens are fixed pseudo-random ids (seeded), as llama-bench does.
Usage: python -m edgeprune.devices.bench_worker MODEL P N REPS WARMUP THREADS (0: all cores)
Standalone (stdlib + llama_cpp): the ssh runner copies this file to the remote and runs it there.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import sys
import time


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "samples": values}


def _peak_rss_kb() -> int:
    """VmHWM of this process. ru_maxrss is no good here: Linux keeps it across exec, so a worker
    forked from a planner holding a torch model would report the planner's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(model: str, n_prompt: int, n_gen: int, reps: int, warmup: int, threads: int) -> dict:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=model, n_ctx=n_prompt + n_gen + 8, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)
    load_s = time.perf_counter() - t0
    rng = random.Random(0)
    vocab = llm.n_vocab()
    prompt = [rng.randrange(3, vocab) for _ in range(n_prompt)]
    pp, tg = [], []
    try:
        from tqdm import tqdm  # on stderr, which the parent passes through
    except ImportError:  # a bare remote (ssh runner) may have llama-cpp-python only
        def tqdm(it, **_kw):
            return it

    for rep in tqdm(range(warmup + reps), desc="benchmark", unit="rep", leave=False):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        t_pp = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([prompt[-1]])  # fixed token, as llama-bench's tg test: timing, not text
        t_tg = time.perf_counter() - t
        if rep >= warmup:
            pp.append(n_prompt / t_pp)
            tg.append(n_gen / t_tg)
    peak_kb = _peak_rss_kb()
    return {"n_prompt": n_prompt, "n_gen": n_gen, "repetitions": reps, "warmup": warmup, "n_threads": threads,
            "load_s": load_s, "pp_tps": _stats(pp), "tg_tps": _stats(tg), "peak_rss_bytes": peak_kb * 1024,
            "model_bytes": os.path.getsize(model), "host": _host()}


def _host() -> dict:
    """Where the numbers were measured; stdlib only, since this file also runs on ssh remotes."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": cpu, "arch": platform.machine(), "cores": os.cpu_count(), "node": platform.node()}


if __name__ == "__main__":
    m, p, n, r, w, th = sys.argv[1:7]
    print(json.dumps(run(m, int(p), int(n), int(r), int(w), int(th) or os.cpu_count() or 1)))
