"""Pure maths of model comparison, on numpy arrays: no models, no files."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def token_nll(logits: np.ndarray, tokens: list[int] | np.ndarray) -> np.ndarray:
    """-log p(t_i | t_<i) for i >= 1: row i-1 of `logits` predicts token i."""
    logp = log_softmax(logits[:-1])
    return -logp[np.arange(len(logp)), np.asarray(tokens)[1:]]


def kl_per_position(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(P_ref || P) in nats at each position, as llama.cpp's --kl-divergence computes it."""
    ref, new = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(ref) * (ref - new)).sum(-1)


def pair_terms(ref_logits: np.ndarray, logits: np.ndarray, tokens: list[int]) -> dict:
    """One window of two models: NLL sums of both, per-position KL(ref || model), both argmaxes.

    Same values as token_nll and kl_per_position, with each log-softmax computed once (the window's
    logits are ctx x vocab, so this is most of the cost)."""
    ref, new = log_softmax(ref_logits[:-1]), log_softmax(logits[:-1])
    idx, nxt = np.arange(len(new)), np.asarray(tokens)[1:]
    return {"nll": float(-new[idx, nxt].sum()), "ref_nll": float(-ref[idx, nxt].sum()),
            "kl": (np.exp(ref) * (ref - new)).sum(-1), "ref_top1": ref.argmax(-1), "top1": new.argmax(-1)}


def summarize_kld(kl: np.ndarray, ref_top1: np.ndarray, top1: np.ndarray) -> dict:
    kl = np.asarray(kl, dtype=np.float64)
    return {"kld_mean": float(kl.mean()), "kld_median": float(np.median(kl)),
            "kld_p99": float(np.quantile(kl, 0.99)), "kld_max": float(kl.max()),
            "top1_agree": float((np.asarray(ref_top1) == np.asarray(top1)).mean()), "positions": int(kl.size)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, iters: int = 10000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Mean of b - a over the same items, with a percentile bootstrap CI resampling items (pairs kept).

    a, b: per-item scores (e.g. 0/1 correctness) of two models on identical items in the same order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores need two equal-length 1-D arrays, got {a.shape} and {b.shape}")
    d = b - a
    rng = np.random.default_rng(seed)
    # Chunked so 10k resamples of a 14k-item MMLU stay within ~100 MB.
    chunk = max(1, min(iters, 10_000_000 // d.size))
    boots = np.concatenate([d[rng.integers(0, d.size, size=(min(chunk, iters - s), d.size))].mean(1)
                            for s in range(0, iters, chunk)])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {"diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(d.size),
            "a_mean": float(a.mean()), "b_mean": float(b.mean()), "level": 1 - alpha}
