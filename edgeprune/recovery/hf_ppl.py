"""Perplexity of a HF model in torch, on the same protocol as stages/evaluate.gguf_perplexity:
the text tokenized whole (no BOS), non-overlapping `ctx` windows, every token after the first
in a window scored from its in-window prefix; ppl = exp(mean NLL). The windows and their NLL are
evaluation/hf_nll.py's."""

from __future__ import annotations

import math

import torch

from edgeprune.evaluation.hf_nll import text_windows, windows_nll


def hf_perplexity(model, tok, text: str, ctx: int, windows: int | None) -> dict:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    wins = text_windows(ids, ctx, windows, fix="give a longer text or a smaller ctx")
    model.eval()
    nll, count = windows_nll(model, torch.tensor(wins), batch_size=1, desc="hf perplexity")
    return {"ppl": math.exp(nll / count), "tokens_scored": count, "windows": len(wins), "ctx": ctx}
