"""Runs in its own process so peak RSS is the model's, not the planner's.

Shaped like llama-bench: a prompt-processing test (pp) and a token-generation test (tg), each
repeated, with warm-up. Prompt tokens are fixed pseudo-random ids (seeded), as llama-bench does.
Usage: python -m edgeprune.devices.bench_worker MODEL P N REPS WARMUP THREADS [REFERENCE] [--evict-mb=MB]
(THREADS 0: all cores; REFERENCE: measure MODEL interleaved with that GGUF, see run_paired;
--evict-mb: read MB of memory, untimed, before every decoded token and prefill, see set_eviction)
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
    """VmHWM of this process, less the eviction buffer (resident, not the model's). ru_maxrss is no good
    here: Linux keeps it across exec, so a worker forked from a planner holding a torch model would
    report the planner's peak."""
    buf_kb = 0 if _EVICT is None else _EVICT.nbytes // 1024
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) - buf_kb
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - buf_kb


def _load(model: str, n_ctx: int, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                 verbose=False)


def _prompt(llm, n_prompt: int) -> list[int]:
    rng = random.Random(0)  # the same ids for every model of one vocabulary: pairs compare like with like
    vocab = llm.n_vocab()
    return [rng.randrange(3, vocab) for _ in range(n_prompt)]


_EVICT = None  # a buffer larger than the last-level cache, read before each timed step (set_eviction)


def set_eviction(mb: int) -> None:
    """Read `mb` MB before every decoded token and every prefill, outside the timing, so the weights come
    from DRAM. Why: on a host whose last-level cache holds the model (the dev VM: 300 MB L3, SmolLM2
    GGUFs 78-105 MB), speed depends on how much of that cache other tenants leave, and a smaller model
    gains more from it: the speed ratio of -7L Q4_0 to the unpruned Q4_K_M read 1.42-1.99 within two
    minutes without eviction, 1.45-1.47 with 700 MB read (450 MB: 1.49-1.61; bench/README, Planner).
    An edge device's cache is a few MB against a GB model, so DRAM-bound is also what it would do."""
    global _EVICT
    if mb > 0:
        import numpy  # llama-cpp-python's own dependency, so present on every remote that runs this

        _EVICT = numpy.ones(mb << 17)  # float64: mb MB


def _evict_mb() -> int:
    return 0 if _EVICT is None else _EVICT.nbytes >> 20


def _evict() -> None:
    if _EVICT is not None:
        _EVICT[::8].sum()  # one float64 in every 64-byte line: every line is read


def _timed(fn) -> float:
    _evict()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _decode(llm, token: int, n: int) -> float:
    """Seconds to decode `n` tokens (fixed token, as llama-bench's tg test: timing, not text)."""
    if _EVICT is None:
        return _timed(lambda: [llm.eval([token]) for _ in range(n)])
    return sum(_timed(lambda: llm.eval([token])) for _ in range(n))


def _one_rep(llm, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """(pp tok/s, tg tok/s) of one repetition."""
    llm.reset()
    t_pp = _timed(lambda: llm.eval(prompt))
    return len(prompt) / t_pp, n_gen / _decode(llm, prompt[-1], n_gen)


def _progress(n: int):
    try:
        from tqdm import tqdm  # on stderr, which the parent passes through
    except ImportError:  # a bare remote (ssh runner) may have llama-cpp-python only
        return range(n)
    return tqdm(range(n), desc="benchmark", unit="rep", leave=False)


# Repetitions whose speeds differ by more than this factor (fastest / slowest) measured a machine that
# changed under them (another job started, the process was swapped out), not the model: 1.2 / 3.2 /
# 138.8 tok/s was once accepted and cached. They are retaken, up to MAX_REPS_FACTOR x the asked
# repetitions, and the result says whether the last `reps` agreed (runners refuse it when not).
SPREAD_MAX = 2.0


def _spread(values: list[float]) -> float:
    """Fastest / slowest (1.0 for one value; inf when one is not positive)."""
    return max(values) / min(values) if values and min(values) > 0 else float("inf")


def spread_record(samples: dict[str, list[float]], retaken: int = 0, discarded: dict | None = None) -> dict:
    """{"bound", per-series fastest/slowest, "ok", "retaken", "discarded"} for the result JSON."""
    ratios = {k: _finite(_spread(v)) for k, v in samples.items()}
    ok = all(r is not None and r <= SPREAD_MAX for r in ratios.values())
    return {"bound": SPREAD_MAX, **ratios, "ok": ok, "retaken": retaken, "discarded": discarded or {}}


def run(model: str, n_prompt: int, n_gen: int, reps: int, warmup: int, threads: int) -> dict:
    t0 = time.perf_counter()
    llm = _load(model, n_prompt + n_gen + 8, threads)
    load_s = time.perf_counter() - t0
    prompt = _prompt(llm, n_prompt)
    pp, tg = [], []
    for rep in _progress(warmup + reps):
        s_pp, s_tg = _one_rep(llm, prompt, n_gen)
        if rep >= warmup:
            pp.append(s_pp)
            tg.append(s_tg)
    retaken = 0  # the last `reps` repetitions are kept: retaking slides the window past a disturbance
    while not spread_record({"pp": pp[-reps:], "tg": tg[-reps:]})["ok"] and retaken < reps * (MAX_REPS_FACTOR - 1):
        s_pp, s_tg = _one_rep(llm, prompt, n_gen)
        pp.append(s_pp)
        tg.append(s_tg)
        retaken += 1
    spread = spread_record({"pp": pp[-reps:], "tg": tg[-reps:]}, retaken, {"pp_tps": pp[:-reps], "tg_tps": tg[:-reps]})
    peak_kb = _peak_rss_kb()
    return {"n_prompt": n_prompt, "n_gen": n_gen, "repetitions": reps, "warmup": warmup, "n_threads": threads,
            "evict_mb": _evict_mb(), "load_s": load_s, "pp_tps": _stats(pp[-reps:]), "tg_tps": _stats(tg[-reps:]),
            "spread": spread, "peak_rss_bytes": peak_kb * 1024,
            "model_bytes": os.path.getsize(model), "host": _host()}


# Pairing granularity, measured on this 2-core VM (bench/README, Planner, "Paired measurement"):
# its speed wanders +-10 % from one 2-second repetition to the next, so models alternated a whole
# repetition at a time disagree by up to 18 % per pair; alternated every 10 decode tokens (0.2 s),
# the per-repetition ratio of two copies of one GGUF spread 0.975-1.032 (stdev 1.8 %).
DECODE_SLICE = 10      # decode tokens per interleaved slice
PREFILL_ROUNDS = 2     # prefills per model per repetition, alternated
RATIO_RSE = 0.02       # stop adding repetitions once both ratios' standard errors are below this
MAX_REPS_FACTOR = 4    # ... or at this many times the asked repetitions


def _paired_rep(models: list, prompts: list, n_gen: int, flip: bool) -> list[tuple[float, float]]:
    """(pp tok/s, tg tok/s) of each of the two models in one repetition, measured in alternating
    slices (ABBA: the order flips every slice, and `flip` starts the repetition the other way)."""
    times = [[0.0, 0.0], [0.0, 0.0]]
    order = [1, 0] if flip else [0, 1]
    for k in range(PREFILL_ROUNDS):
        for j in (order if k % 2 == 0 else order[::-1]):
            models[j].reset()  # each ends holding its prompt, where the decode slices continue
            times[j][0] += _timed(lambda: models[j].eval(prompts[j]))
    done, k = 0, 0
    while done < n_gen:
        n = min(DECODE_SLICE, n_gen - done)
        for j in (order if k % 2 == 0 else order[::-1]):
            times[j][1] += _decode(models[j], prompts[j][-1], n)
        done, k = done + n, k + 1
    return [(PREFILL_ROUNDS * len(prompts[j]) / times[j][0], n_gen / times[j][1]) for j in (0, 1)]


def _rse(values: list[float]) -> float:
    """Relative standard error of the mean (inf below two values)."""
    if len(values) < 2:
        return float("inf")
    return statistics.stdev(values) / (len(values) ** 0.5 * abs(statistics.fmean(values)))


def _finite(x: float) -> float | None:
    return x if x != float("inf") else None  # JSON has no infinity


def run_paired(model: str, reference: str, n_prompt: int, n_gen: int, reps: int, warmup: int, threads: int) -> dict:
    """`model` and `reference` loaded in this one process and measured in alternating slices (see
    DECODE_SLICE), so both see the same machine state: this VM's speed drifts 10-25 % within minutes
    and +-10 % between seconds, which separate runs cannot tell from a model's speed. Repetitions go
    on past `reps` until the per-repetition candidate/reference ratios' standard errors are below
    RATIO_RSE (at most MAX_REPS_FACTOR x reps). Returns the candidate's numbers as `run` does, the
    reference's under "reference" and the per-repetition ratios under "paired". peak_rss_bytes is the
    candidate's own peak, read before the reference is loaded (after at least one warm-up, so its
    weights and compute buffers are resident)."""
    n_ctx = n_prompt + n_gen + 8
    t0 = time.perf_counter()
    cand = _load(model, n_ctx, threads)
    load_s = time.perf_counter() - t0
    c_prompt = _prompt(cand, n_prompt)
    for _ in range(max(1, warmup)):
        _one_rep(cand, c_prompt, n_gen)
    peak_kb = _peak_rss_kb()
    ref = _load(reference, n_ctx, threads)
    r_prompt = _prompt(ref, n_prompt)
    for _ in range(warmup):
        _one_rep(ref, r_prompt, n_gen)
    c, r = [], []  # (pp, tg) per repetition
    ratio = lambda j: [a[j] / b[j] for a, b in zip(c, r)]  # noqa: E731
    converged = lambda: max(_rse(ratio(0)), _rse(ratio(1))) <= RATIO_RSE  # noqa: E731
    for i in _progress(reps * MAX_REPS_FACTOR):
        cc, rr = _paired_rep([cand, ref], [c_prompt, r_prompt], n_gen, flip=i % 2 == 1)
        c.append(cc)
        r.append(rr)
        if len(c) >= reps and converged():
            break
    col = lambda rows, j: [row[j] for row in rows]  # noqa: E731
    return {"n_prompt": n_prompt, "n_gen": n_gen, "repetitions": len(c), "warmup": warmup, "n_threads": threads,
            "evict_mb": _evict_mb(), "load_s": load_s, "pp_tps": _stats(col(c, 0)), "tg_tps": _stats(col(c, 1)),
            "peak_rss_bytes": peak_kb * 1024, "peak_rss_both_bytes": _peak_rss_kb() * 1024,
            "model_bytes": os.path.getsize(model), "host": _host(),
            "reference": {"model": os.path.basename(reference), "model_bytes": os.path.getsize(reference),
                          "pp_tps": _stats(col(r, 0)), "tg_tps": _stats(col(r, 1))},
            "spread": spread_record({"pp_ratio": ratio(0), "tg_ratio": ratio(1)}),  # drift cancels in ratios
            "paired": {"order": "ABBA", "decode_slice": DECODE_SLICE, "prefill_rounds": PREFILL_ROUNDS,
                       "pairs": len(c), "asked_pairs": reps, "rse_bound": RATIO_RSE,
                       "converged": converged(),
                       "pp_ratio": _stats(ratio(0)) | {"rse": _finite(_rse(ratio(0)))},
                       "tg_ratio": _stats(ratio(1)) | {"rse": _finite(_rse(ratio(1)))}}}


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
    args = [a for a in sys.argv[1:] if not a.startswith("--evict-mb=")]
    for a in sys.argv[1:]:
        if a.startswith("--evict-mb="):
            set_eviction(int(a.split("=", 1)[1]))
    m, p, n, r, w, th = args[:6]
    nums = (int(p), int(n), int(r), int(w), int(th) or os.cpu_count() or 1)
    ref_path = args[6] if len(args) > 6 else None
    print(json.dumps(run_paired(m, ref_path, *nums) if ref_path else run(m, *nums)))
