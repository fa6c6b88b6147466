"""Perplexity and KL divergence vs a parent, on the same token windows for HF folders and GGUFs.

Protocol (the one stages/evaluate.py uses for GGUFs): the text is tokenized whole, without BOS, by the
evaluated model's tokenizer; cut into non-overlapping windows of `ctx` tokens (the first `windows`
of them); within a window every token after the first is scored from its in-window prefix;
ppl = exp(mean NLL). KLD is KL(parent || model) of the next-token distributions at those same
scored positions (llama.cpp's --kl-divergence idea), averaged over positions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgeprune.evaluation.hf_nll import text_windows
from edgeprune.evaluation.metrics import pair_terms, summarize_kld, token_nll
from edgeprune.toolchain import llamacpp


class GGUFLogits:
    def __init__(self, path: Path, ctx: int, threads: int | None = None):
        self.llm = llamacpp.open_gguf(path, n_ctx=ctx, threads=threads, logits_all=True)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def tokenize_with_bos(self, text: str) -> tuple[list[int], int | None]:
        """llama.cpp's common_tokenize(text, add_special=true): BOS first when the vocabulary adds one.
        Returns the ids and the BOS id (None when the vocabulary adds none)."""
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        return ids, (self.llm.token_bos() if self.llm._model.add_bos_token() else None)

    def __call__(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


class HFLogits:
    def __init__(self, path: Path, threads: int | None = None):
        import torch

        from edgeprune.toolchain.hf import load_model

        if threads:
            torch.set_num_threads(threads)
        self.model, self.tok = load_model(Path(path))

    def tokenize(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def tokenize_with_bos(self, text: str) -> tuple[list[int], int | None]:
        """As GGUFLogits.tokenize_with_bos, by the HF tokenizer's own special-token rule."""
        ids = self.tok(text, add_special_tokens=True)["input_ids"]
        bos = self.tok.bos_token_id
        adds = bos is not None and self.tok("", add_special_tokens=True)["input_ids"][:1] == [bos]
        return ids, (bos if adds else None)

    def __call__(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()

    def close(self) -> None:
        del self.model


def open_logits(model: Path, ctx: int, threads: int | None = None):
    model = Path(model)
    return GGUFLogits(model, ctx, threads) if model.suffix == ".gguf" else HFLogits(model, threads)


def windows_of(ids: list[int], ctx: int, windows: int | None,
               fix: str = "give a longer text or a smaller --ctx") -> list[list[int]]:
    return text_windows(ids, ctx, windows, fix)


def perplexity(source, wins: list[list[int]]) -> dict:
    nll, count = 0.0, 0
    for win in tqdm(wins, desc="perplexity", unit="win", leave=False):
        terms = token_nll(source(win), win)
        nll, count = nll + float(terms.sum()), count + terms.size
    return {"ppl": math.exp(nll / count), "tokens_scored": count, "windows": len(wins), "ctx": len(wins[0])}


def model_perplexity(model: Path, text: str, ctx: int = 512, windows: int | None = None,
                     threads: int | None = None, fix: str = "give a longer text or a smaller --ctx") -> dict:
    """Perplexity of a HF folder or a GGUF under the stated protocol; `fix`: what a too-short text
    tells the user to change."""
    source = open_logits(model, ctx, threads)
    try:
        ids = source.tokenize(text)
        return perplexity(source, windows_of(ids, ctx, windows, fix)) | {"total_tokens": len(ids)}
    finally:
        source.close()


def _prefix_mismatches(ids: list[int], ref, text: str, span: int) -> int:
    """Positions among the first `span` where the parent's tokenizer disagrees. Tokenizes only a text
    prefix comfortably past the span (BPE is local), not the whole text again."""
    cut = min(len(text), int(len(text) * span / max(len(ids), 1) * 1.2) + 2000)
    ref_ids = ref.tokenize(text[:cut])
    return sum(x != y for x, y in zip(ids[:span], ref_ids[:span])) + max(0, span - len(ref_ids))


def compare_to_parent(model: Path, parent: Path, text: str | None = None, ctx: int = 512,
                      windows: int | None = 16, threads: int | None = None) -> dict:
    """ppl of model and parent, and KLD(parent || model), on identical windows.

    Both models are fed the model's token ids. llama.cpp's and HF's BPE agree on WikiText-2 except
    for a few rare characters (first difference at token 238,941 for SmolLM2); they are counted."""
    from edgeprune.data import eval_text

    text = text if text is not None else eval_text(None)
    child, ref = open_logits(model, ctx, threads), open_logits(parent, ctx, threads)
    try:
        ids = child.tokenize(text)
        wins = windows_of(ids, ctx, windows)
        mismatch = _prefix_mismatches(ids, ref, text, len(wins) * ctx)
        terms = [pair_terms(ref(win), child(win), win) for win in tqdm(wins, desc="kld", unit="win", leave=False)]
    finally:
        child.close()
        ref.close()
    count = sum(len(t["kl"]) for t in terms)
    return {"ppl": math.exp(sum(t["nll"] for t in terms) / count),
            "parent_ppl": math.exp(sum(t["ref_nll"] for t in terms) / count),
            "tokens_scored": count, "windows": len(wins), "ctx": ctx, "total_tokens": len(ids),
            "parent_tokenizer_mismatches": mismatch,
            **summarize_kld(np.concatenate([t["kl"] for t in terms]), np.concatenate([t["ref_top1"] for t in terms]),
                            np.concatenate([t["top1"] for t in terms]))}
