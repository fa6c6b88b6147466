"""Perplexity of a HF model in torch, on the same protocol as stages/evaluate.gguf_perplexity:
the text tokenized whole (no BOS), non-overlapping `ctx` windows, every token after the first
in a window scored from its in-window prefix; ppl = exp(mean NLL)."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from edgeprune.errors import DataError


@torch.no_grad()
def hf_perplexity(model, tok, text: str, ctx: int, windows: int | None) -> dict:
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    n_win = len(ids) // ctx if windows is None else min(windows, len(ids) // ctx)
    if n_win == 0:
        raise DataError(f"evaluation text has {len(ids)} tokens, shorter than one window of {ctx}",
                        where="evaluation text", fix="give a longer text or a smaller ctx")
    model.eval()
    dev = next(model.parameters()).device
    nll, count = 0.0, 0
    for w in tqdm(range(n_win), desc="hf perplexity", unit="win", leave=False):
        chunk = ids[w * ctx:(w + 1) * ctx].unsqueeze(0).to(dev)
        logits = model(input_ids=chunk).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
        count += ctx - 1
    return {"ppl": math.exp(nll / count), "tokens_scored": count, "windows": n_win, "ctx": ctx}
