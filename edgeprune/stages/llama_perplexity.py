"""Perplexity and KLD on llama.cpp's own protocol (the maths: evaluation/llama_ppl.py), for a GGUF or a HF
folder, optionally against a parent. Numbers comparable with `llama-perplexity -f TEXT -c CTX` and its
`--kl-divergence` output on the same file and text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgeprune.errors import ConfigError, DataError
from edgeprune.evaluation import llama_ppl as lp
from edgeprune.stages.evaluate import check_windows
from edgeprune.stages.quality import open_logits

PROTOCOL = "llama-perplexity"


def check_chunks(ctx: int, chunks: int | None) -> None:
    """Before any model loads: a chunk scores ctx - 1 - ctx//2 tokens, so ctx >= 3."""
    check_windows(ctx, chunks)
    if lp.scored_per_chunk(ctx) < 1:
        raise ConfigError(f"llama-perplexity scores the second half of each chunk (ctx - 1 - ctx/2 tokens), "
                          f"so the chunk must be at least 3 tokens, got {ctx}", where="--ctx",
                          fix="e.g. --ctx 512 (llama.cpp's default)")


def _chunks(ids: list[int], bos: int | None, ctx: int, chunks: int | None) -> np.ndarray:
    if len(ids) < 2 * ctx:  # llama.cpp's own minimum
        raise DataError(f"evaluation text has {len(ids)} tokens; llama-perplexity needs at least 2 x ctx = "
                        f"{2 * ctx}", where="evaluation text", fix="give a longer text or a smaller --ctx")
    return lp.make_chunks(ids, ctx, chunks, bos)


def _check_vocab(rows: np.ndarray, base_rows: np.ndarray, parent: Path) -> None:
    if rows.shape[-1] != base_rows.shape[-1]:
        raise DataError(f"the parent's vocabulary has {base_rows.shape[-1]} tokens, the model's "
                        f"{rows.shape[-1]}", where=str(parent),
                        fix="compare models that share a tokenizer (the parent the model was pruned from)")


def _header(ctx: int, chunks: np.ndarray, ids: list[int], bos: int | None) -> dict:
    return {"protocol": PROTOCOL, "ctx": ctx, "chunks": len(chunks),
            "tokens_scored": len(chunks) * lp.scored_per_chunk(ctx), "total_tokens": len(ids), "bos": bos}


def llama_perplexity(model: Path, text: str, ctx: int = 512, chunks: int | None = None,
                     threads: int | None = None) -> dict:
    """ppl ± its uncertainty and the running estimate after each chunk, as `llama-perplexity` prints them."""
    check_chunks(ctx, chunks)
    source = open_logits(model, ctx, threads)
    try:
        ids, bos = source.tokenize_with_bos(text)
        wins = _chunks(ids, bos, ctx, chunks)
        nll = [lp.chunk_nll(source(list(map(int, w))), w) for w in tqdm(wins, desc="perplexity", unit="chunk",
                                                                         leave=False)]
    finally:
        source.close()
    ppl, unc = lp.ppl_estimate(np.concatenate(nll))
    return _header(ctx, wins, ids, bos) | {"ppl": ppl, "ppl_unc": unc, "running_ppl": lp.running_ppl(nll)}


def llama_kld(model: Path, parent: Path, text: str, ctx: int = 512, chunks: int | None = None,
              threads: int | None = None) -> dict:
    """`llama-perplexity --kl-divergence` of `model` against `parent` (its base logits), on the model's chunks.

    Both see the model's token ids; the parent's log-probs are coded to 16 bits as --kl-divergence-base
    stores them, so the statistics are those llama.cpp would print for the same two files."""
    check_chunks(ctx, chunks)
    child, ref = open_logits(model, ctx, threads), open_logits(parent, ctx, threads)
    try:
        ids, bos = child.tokenize_with_bos(text)
        wins = _chunks(ids, bos, ctx, chunks)
        terms = []
        for w in tqdm(wins, desc="kld", unit="chunk", leave=False):
            chunk = list(map(int, w))
            base_rows, targets = lp.scored_rows(ref(chunk), w)
            rows, _ = lp.scored_rows(child(chunk), w)
            _check_vocab(rows, base_rows, parent)
            terms.append(lp.kld_terms(rows, lp.quantize_log_probs(base_rows), targets))
    finally:
        child.close()
        ref.close()
    running = lp.running_ppl([t.nll for t in terms])
    summary = lp.kld_summary(lp.KLDTerms.concat(terms))
    # top1_agree: the key the report and the windows protocol use for the same fraction
    return _header(ctx, wins, ids, bos) | summary | {"top1_agree": summary["same_top"], "running_ppl": running}


def llama_kld_many(models: dict[str, Path], parent: Path, text: str, ctx: int = 512, chunks: int | None = None,
                   threads: int | None = None) -> dict[str, dict]:
    """llama_kld of several models against one parent, the parent run once per chunk (a quant sweep).
    The models must share the parent's tokenizer: the parent's token ids are used for all."""
    check_chunks(ctx, chunks)
    ref = open_logits(parent, ctx, threads)
    try:
        ids, bos = ref.tokenize_with_bos(text)
        wins = _chunks(ids, bos, ctx, chunks)
        bases = [(lp.quantize_log_probs(rows), targets)
                 for rows, targets in (lp.scored_rows(ref(list(map(int, w))), w) for w in wins)]
    finally:
        ref.close()
    out = {}
    for name, path in models.items():
        child = open_logits(path, ctx, threads)
        try:
            terms = []
            for w, (base, targets) in tqdm(list(zip(wins, bases)), desc=f"kld {name}", unit="chunk", leave=False):
                rows, _ = lp.scored_rows(child(list(map(int, w))), w)
                terms.append(lp.kld_terms(rows, base, targets))
        finally:
            child.close()
        summary = lp.kld_summary(lp.KLDTerms.concat(terms))
        out[name] = _header(ctx, wins, ids, bos) | summary | {"top1_agree": summary["same_top"]}
    return out
