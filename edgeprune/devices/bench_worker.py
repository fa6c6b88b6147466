"""Runs in its own process so peak RSS is the model's, not the planner's.

Shaped like llama-bench: a prompt-processing test (pp) and a token-generation test (tg), each
repeated, with warm-up. Prompt tokens are fixed pseudo-random ids (seeded), as llama-bench does.
Usage: python -m edgeprune.devices.bench_worker MODEL P N REPS WARMUP THREADS [REFERENCE]
(THREADS 0: all cores; REFERENCE: measure MODEL interleaved with that GGUF, see run_paired)
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


def _load(model: str, n_ctx: int, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                 verbose=False)


def _prompt(llm, n_prompt: int) -> list[int]:
    rng = random.Random(0)  # the same ids for every model of one vocabulary: pairs compare like with like
    vocab = llm.n_vocab()
    return [rng.randrange(3, vocab) for _ in range(n_prompt)]


def _one_rep(llm, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """(pp tok/s, tg tok/s) of one repetition."""
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    t_pp = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([prompt[-1]])  # fixed token, as llama-bench's tg test: timing, not text
    t_tg = time.perf_counter() - t
    return len(prompt) / t_pp, n_gen / t_tg


def _progress(n: int):
    try:
        from tqdm import tqdm  # on stderr, which the parent passes through
    except ImportError:  # a bare remote (ssh runner) may have llama-cpp-python only
        return range(n)
    return tqdm(range(n), desc="benchmark", unit="rep", leave=False)


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
    peak_kb = _peak_rss_kb()
    return {"n_prompt": n_prompt, "n_gen": n_gen, "repetitions": reps, "warmup": warmup, "n_threads": threads,
            "load_s": load_s, "pp_tps": _stats(pp), "tg_tps": _stats(tg), "peak_rss_bytes": peak_kb * 1024,
            "model_bytes": os.path.getsize(model), "host": _host()}


# Pairing granularity, measured on this 2-core VM (bench/README, Planner, "Paired measurement"):
# its speed wanders +-10 % from one 2-second repetition to the next, so models alternated a whole
# repetition at a time disagree by up to 18 % per pair; alternated every 10 decode tokens (0.2 s),
# the per-repetition ratio of two copies of one GGUF spread 0.975-1.032 (stdev 1.8 %).
DECODE_SLICE = 10      # decode tokens per interleaved slice
PREFILL_ROUNDS = 2     # prefills per model per repetition, alternated
RATIO_RSE = 0.02       # stop adding repetitions once both ratios' standard errors are below this
MAX_REPS_FACTOR = 4    # ... or at this many times the asked repetitions


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


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
            times[j][1] += _timed(lambda: [models[j].eval([prompts[j][-1]]) for _ in range(n)])
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
    for i in _progress(reps * MAX_REPS_FACTOR):
        cc, rr = _paired_rep([cand, ref], [c_prompt, r_prompt], n_gen, flip=i % 2 == 1)
        c.append(cc)
        r.append(rr)
        if len(c) >= reps and max(_rse(ratio(0)), _rse(ratio(1))) <= RATIO_RSE:
            break
    col = lambda rows, j: [row[j] for row in rows]  # noqa: E731
    return {"n_prompt": n_prompt, "n_gen": n_gen, "repetitions": len(c), "warmup": warmup, "n_threads": threads,
            "load_s": load_s, "pp_tps": _stats(col(c, 0)), "tg_tps": _stats(col(c, 1)),
            "peak_rss_bytes": peak_kb * 1024, "peak_rss_both_bytes": _peak_rss_kb() * 1024,
            "model_bytes": os.path.getsize(model), "host": _host(),
            "reference": {"model": os.path.basename(reference), "model_bytes": os.path.getsize(reference),
                          "pp_tps": _stats(col(r, 0)), "tg_tps": _stats(col(r, 1))},
            "paired": {"order": "ABBA", "decode_slice": DECODE_SLICE, "prefill_rounds": PREFILL_ROUNDS,
                       "pairs": len(c), "asked_pairs": reps, "rse_bound": RATIO_RSE,
                       "converged": max(_rse(ratio(0)), _rse(ratio(1))) <= RATIO_RSE,
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
    m, p, n, r, w, th = sys.argv[1:7]
    nums = (int(p), int(n), int(r), int(w), int(th) or os.cpu_count() or 1)
    ref_path = sys.argv[7] if len(sys.argv) > 7 else None
    print(json.dumps(run_paired(m, ref_path, *nums) if ref_path else run(m, *nums)))
