"""Perplexity of a GGUF with llama.cpp, on a stated protocol.

Protocol: the text is tokenized whole (no BOS); cut into non-overlapping windows of `ctx`
tokens; within each window every token after the first is scored from its in-window prefix.
ppl = exp(mean NLL over all scored tokens). `windows` limits how many windows are used (the
first ones, so two models always see the same tokens).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgeprune.errors import DataError
from edgeprune.runner import StepStore
from edgeprune.toolchain import llamacpp


def window_nll(logits: np.ndarray, tokens: list[int]) -> tuple[float, int]:
    """Sum of -log p(t_i | t_<i) for i >= 1 and the count scored."""
    x = logits[:-1].astype(np.float64)
    m = x.max(-1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(x - m).sum(-1)))
    picked = x[np.arange(len(x)), tokens[1:]]
    return float((logz - picked).sum()), len(x)


def gguf_perplexity(gguf: Path, text: str, ctx: int, windows: int | None, threads: int | None = None) -> dict:
    llm = llamacpp.open_gguf(gguf, n_ctx=ctx, threads=threads, logits_all=True)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    n_win = len(ids) // ctx if windows is None else min(windows, len(ids) // ctx)
    if n_win == 0:
        raise DataError(f"evaluation text has {len(ids)} tokens, shorter than one window of {ctx}",
                        where="evaluation text", fix="give a longer text or a smaller quality.ctx")
    nll, count = 0.0, 0
    for w in tqdm(range(n_win), desc="perplexity", unit="win", leave=False):
        chunk = ids[w * ctx : (w + 1) * ctx]
        llm.reset()
        llm.eval(chunk)
        s, c = window_nll(np.array(llm.scores[:ctx], dtype=np.float32), chunk)
        nll, count = nll + s, count + c
    llm.close()
    return {"ppl": math.exp(nll / count), "tokens_scored": count, "windows": n_win, "ctx": ctx,
            "total_tokens": len(ids)}


def evaluate_ppl(store: StepStore, gguf: Path, gguf_key: str, text: str, text_hash: str, ctx: int,
                 windows: int | None, threads: int | None = None) -> dict:
    """`threads` changes only the speed (not part of the key): the planner passes the target's."""
    key = {"gguf": gguf_key, "text": text_hash, "ctx": ctx, "windows": windows}
    return store.run("ppl", key, lambda out: gguf_perplexity(gguf, text, ctx, windows, threads)).meta
