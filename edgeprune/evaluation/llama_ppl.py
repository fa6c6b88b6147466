"""llama.cpp's perplexity protocol (tools/perplexity/perplexity.cpp, perplexity() and kl_divergence()),
as pure functions on numpy arrays: no models, no files.

Protocol: the text is tokenized once with BOS when the vocabulary adds one; cut into
len(tokens) // n_ctx chunks of n_ctx tokens (at least two are needed); in each chunk the first token is
replaced by BOS (when the vocabulary adds one); the whole chunk is evaluated and only its second half is
scored: the logits at positions first .. n_ctx-2 (first = n_ctx // 2) predict tokens first+1 .. n_ctx-1,
n_ctx - 1 - first tokens per chunk. ppl = exp(mean NLL over every scored token).

--kl-divergence compares with the base model's log-probabilities as llama.cpp stores them: per position,
16-bit codes over [max - 16, max] of the logits (everything below is clamped to the floor), and the KL sum
skips base log-probs at or below -16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The percentiles --kl-divergence prints for KLD and for delta-p, as (key suffix, fraction).
KLD_PERCENTILES = (("p99_9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.90), ("p10", 0.10),
                   ("p5", 0.05), ("p1", 0.01), ("p0_1", 0.001))
DP_PERCENTILES = (("p99_9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.90), ("p75", 0.75), ("p25", 0.25),
                  ("p10", 0.10), ("p5", 0.05), ("p1", 0.01), ("p0_1", 0.001))
LOG_PROB_FLOOR = 16.0  # nats below the top logit kept by the base's 16-bit codes


def first_scored(n_ctx: int) -> int:
    return n_ctx // 2


def scored_per_chunk(n_ctx: int) -> int:
    return n_ctx - 1 - first_scored(n_ctx)


def chunk_count(n_tokens: int, n_ctx: int, chunks: int | None) -> int:
    """llama.cpp's n_chunk: whole chunks of the text, capped by --chunks."""
    n_max = n_tokens // n_ctx
    return n_max if chunks is None else min(chunks, n_max)


def make_chunks(tokens: list[int] | np.ndarray, n_ctx: int, chunks: int | None, bos: int | None) -> np.ndarray:
    """chunks x n_ctx token ids, each chunk's first token replaced by `bos` (None: the vocabulary adds no BOS)."""
    ids = np.asarray(tokens, dtype=np.int64)
    n = chunk_count(len(ids), n_ctx, chunks)
    out = ids[: n * n_ctx].reshape(n, n_ctx).copy()
    if bos is not None:
        out[:, 0] = bos
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def scored_rows(logits: np.ndarray, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logits rows that are scored (positions first .. n_ctx-2) and the tokens they predict."""
    n_ctx = len(chunk)
    if logits.shape[0] != n_ctx:
        raise ValueError(f"logits for {logits.shape[0]} positions, chunk of {n_ctx} tokens")
    first = first_scored(n_ctx)
    return logits[first: n_ctx - 1], np.asarray(chunk)[first + 1:]


def chunk_nll(logits: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """-log p(token) at each scored position of one chunk (n_ctx - 1 - n_ctx//2 values)."""
    rows, targets = scored_rows(logits, chunk)
    logp = log_softmax(rows)
    return -logp[np.arange(len(targets)), targets]


def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """llama.cpp's mean ± standard error: sqrt(var / (n-1)), 0 when n <= 10 or var <= 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 1:
        return 0.0, 0.0
    mean = float(v.mean())
    var = float((v * v).mean()) - mean * mean
    return mean, (float(np.sqrt(var / (v.size - 1))) if var > 0 and v.size > 10 else 0.0)


def ppl_estimate(nll: np.ndarray) -> tuple[float, float]:
    """(ppl, its uncertainty) from every scored token's NLL: exp(mean), ppl * standard error of the mean.

    perplexity() uses its own error rule (no n > 10 condition); kl_divergence() uses mean_and_uncertainty."""
    v = np.asarray(nll, dtype=np.float64)
    mean = float(v.mean())
    var = float((v * v).mean()) - mean * mean
    ppl = float(np.exp(mean))
    return ppl, (ppl * float(np.sqrt(var / (v.size - 1))) if var > 0 and v.size > 1 else 0.0)


def running_ppl(nll_per_chunk: list[np.ndarray]) -> list[float]:
    """The estimate llama.cpp prints after each chunk: [1]a,[2]b,..."""
    sums = np.cumsum([float(np.sum(c)) for c in nll_per_chunk])
    counts = np.cumsum([len(c) for c in nll_per_chunk])
    return [float(np.exp(s / n)) for s, n in zip(sums, counts)]


@dataclass(frozen=True)
class BaseLogProbs:
    """Base-model log-probs of the scored positions as --kl-divergence-base stores them: per row a scale, the
    floor log-prob and one uint16 code per token; log p = scale * code + min_log_prob."""

    scale: np.ndarray  # (rows,) float32
    min_log_prob: np.ndarray  # (rows,) float32
    codes: np.ndarray  # (rows, vocab) uint16

    def log_probs(self) -> np.ndarray:
        return (self.scale[:, None] * self.codes.astype(np.float32) + self.min_log_prob[:, None]).astype(np.float32)


def quantize_log_probs(rows: np.ndarray) -> BaseLogProbs:
    """llama.cpp's 16-bit coding of a row's log-softmax (perplexity.cpp, log_softmax with uint16 output)."""
    x = np.asarray(rows, dtype=np.float32)
    mx = x.max(-1)
    mn = np.maximum(x.min(-1), mx - np.float32(LOG_PROB_FLOOR))
    log_sum_exp = np.log(np.exp((x - mx[:, None]).astype(np.float64)).sum(-1)).astype(np.float32)
    min_log_prob = (mn - mx - log_sum_exp).astype(np.float32)
    scale = ((mx - mn) / np.float32(65535)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    codes = np.where(x > mn[:, None], np.rint(inv[:, None] * (x - mn[:, None])), 0)
    return BaseLogProbs(scale, min_log_prob, codes.astype(np.uint16))


@dataclass(frozen=True)
class KLDTerms:
    """Per scored position: what --kl-divergence accumulates."""

    nll: np.ndarray  # -log q(token), evaluated model
    nll_base: np.ndarray  # -log p(token) from the base's 16-bit log-probs
    kld: np.ndarray  # sum_i p_i (log p_i - log q_i) over base log-probs above -16
    p_diff: np.ndarray  # q(token) - p(token)
    same_top: np.ndarray  # bool: argmax q == argmax p

    @staticmethod
    def concat(parts: list["KLDTerms"]) -> "KLDTerms":
        return KLDTerms(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("nll", "nll_base", "kld", "p_diff", "same_top")))


def kld_terms(rows: np.ndarray, base: BaseLogProbs, targets: np.ndarray) -> KLDTerms:
    """One chunk's scored rows of the evaluated model against the base's coded log-probs."""
    logq = log_softmax(rows)
    logp = base.log_probs().astype(np.float64)
    idx, tgt = np.arange(len(targets)), np.asarray(targets)
    nll, nll_base = -logq[idx, tgt], -logp[idx, tgt]
    kept = logp > -LOG_PROB_FLOOR
    kld = np.where(kept, np.exp(logp) * (logp - logq), 0.0).sum(-1)
    same = np.asarray(rows).argmax(-1) == logp.argmax(-1)
    return KLDTerms(nll, nll_base, kld, np.exp(-nll) - np.exp(-nll_base), same)


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile: linear between neighbours at fraction * (n - 1)."""
    v = sorted_values
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    p = fraction * (len(v) - 1)
    ip = int(p)
    p -= ip
    return float((1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)])


def median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    return float(0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1]) if n % 2 == 0 else sorted_values[n // 2])


def _covariance(a: np.ndarray, b: np.ndarray) -> float:
    n = a.size
    return 0.0 if n < 10 else (float((a * b).mean()) - float(a.mean()) * float(b.mean())) / (n - 1)


def kld_summary(t: KLDTerms) -> dict:
    """The statistics --kl-divergence prints (its three blocks), as numbers: fractions, not percent."""
    ln_q, ln_q_unc = mean_and_uncertainty(t.nll)
    ln_b, ln_b_unc = mean_and_uncertainty(t.nll_base)
    cov = _covariance(t.nll, t.nll_base)
    ppl, ppl_base = float(np.exp(ln_q)), float(np.exp(ln_b))
    ratio_unc = float(np.sqrt(max(ln_q_unc ** 2 + ln_b_unc ** 2 - 2 * cov, 0.0)))
    out = {"ppl": ppl, "ppl_unc": ppl * ln_q_unc, "parent_ppl": ppl_base, "parent_ppl_unc": ppl_base * ln_b_unc,
           "ln_ppl_ratio": ln_q - ln_b, "ln_ppl_ratio_unc": ratio_unc,
           "ppl_ratio": float(np.exp(ln_q - ln_b)), "ppl_ratio_unc": float(np.exp(ln_q - ln_b)) * ratio_unc,
           "cor_ln_ppl": cov / (ln_q_unc * ln_b_unc) if ln_q_unc * ln_b_unc > 0 else None}
    kld = np.sort(t.kld.astype(np.float32))
    out["kld_mean"], out["kld_mean_unc"] = mean_and_uncertainty(t.kld)
    out |= {"kld_max": float(kld[-1]), "kld_median": median(kld), "kld_min": float(kld[0])}
    out |= {f"kld_{k}": percentile(kld, f) for k, f in KLD_PERCENTILES}
    dp = np.sort(t.p_diff.astype(np.float32))
    out["dp_mean"], out["dp_mean_unc"] = mean_and_uncertainty(t.p_diff)
    out |= {"dp_max": float(dp[-1]), "dp_median": median(dp), "dp_min": float(dp[0])}
    out |= {f"dp_{k}": percentile(dp, f) for k, f in DP_PERCENTILES}
    mse, mse_unc = mean_and_uncertainty(t.p_diff.astype(np.float64) ** 2)
    out["dp_rms"] = float(np.sqrt(mse))
    out["dp_rms_unc"] = 0.5 / out["dp_rms"] * mse_unc if out["dp_rms"] > 0 else 0.0
    n, same = t.same_top.size, float(np.mean(t.same_top))
    out["same_top"] = same
    out["same_top_unc"] = float(np.sqrt(same * (1 - same) / (n - 1))) if n > 1 else 0.0
    out["positions"] = int(n)
    return out
