"""One implementation of the windows perplexity protocol per numeric path: the torch one
(evaluation/hf_nll.windows_nll) and the logits one (stages/quality.perplexity). The old call sites
give bit-identical values: each is checked against a verbatim copy of the code it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgeprune.data import eval_text
from edgeprune.errors import DataError
from edgeprune.evaluation.hf_nll import text_windows, windows_nll
from edgeprune.evaluation.metrics import token_nll
from edgeprune.recovery.hf_ppl import hf_perplexity
from edgeprune.stages.evaluate import gguf_perplexity, window_nll
from edgeprune.stages.heal_step import holdout_nll
from edgeprune.toolchain.hf import load_model


@torch.no_grad()
def old_hf_perplexity(model, tok, text, ctx, windows):
    """recovery/hf_ppl.hf_perplexity before it called windows_nll."""
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    n_win = len(ids) // ctx if windows is None else min(windows, len(ids) // ctx)
    model.eval()
    nll, count = 0.0, 0
    for w in range(n_win):
        chunk = ids[w * ctx:(w + 1) * ctx].unsqueeze(0)
        logits = model(input_ids=chunk).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
        count += ctx - 1
    return {"ppl": math.exp(nll / count), "tokens_scored": count, "windows": n_win, "ctx": ctx}


def old_window_nll(logits, tokens):
    """stages/evaluate.window_nll before it called evaluation.metrics.token_nll."""
    x = logits[:-1].astype(np.float64)
    m = x.max(-1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(x - m).sum(-1)))
    picked = x[np.arange(len(x)), tokens[1:]]
    return float((logz - picked).sum()), len(x)


def old_gguf_perplexity(gguf, text, ctx, windows):
    """stages/evaluate.gguf_perplexity before it called stages/quality.model_perplexity."""
    from edgeprune.toolchain import llamacpp

    llm = llamacpp.open_gguf(gguf, n_ctx=ctx, threads=None, logits_all=True)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    n_win = len(ids) // ctx if windows is None else min(windows, len(ids) // ctx)
    nll, count = 0.0, 0
    for w in range(n_win):
        chunk = ids[w * ctx: (w + 1) * ctx]
        llm.reset()
        llm.eval(chunk)
        s, c = old_window_nll(np.array(llm.scores[:ctx], dtype=np.float32), chunk)
        nll, count = nll + s, count + c
    llm.close()
    return {"ppl": math.exp(nll / count), "tokens_scored": count, "windows": n_win, "ctx": ctx,
            "total_tokens": len(ids)}


@pytest.fixture(scope="module")
def text():
    return eval_text(None)[:6000]


def test_hf_perplexity_is_unchanged(tiny_llama, text):
    model, tok = load_model(tiny_llama)
    new, old = hf_perplexity(model, tok, text, 64, 3), old_hf_perplexity(model, tok, text, 64, 3)
    assert new == old and new["tokens_scored"] == 3 * 63
    assert new["ppl"] > 1000  # random weights: near-uniform over the 49k vocab


def test_heal_holdout_nll_is_windows_nll(tiny_llama):
    """heal_step.holdout_nll is the shared implementation: its value bit for bit, batches of 4 and all."""
    model, _ = load_model(tiny_llama)
    windows = torch.randint(0, 2000, (6, 24), generator=torch.Generator().manual_seed(3))
    total, count = windows_nll(model, windows, batch_size=4)
    assert count == 6 * 23
    assert holdout_nll(model, windows) == total / count
    assert total / count == pytest.approx(windows_nll(model, windows, batch_size=1)[0] / count, rel=1e-5)


def test_window_nll_is_token_nll():
    rng = np.random.default_rng(0)
    logits, tokens = rng.normal(size=(9, 50)).astype(np.float32) * 4, rng.integers(0, 50, 9).tolist()
    assert window_nll(logits, tokens) == old_window_nll(logits, tokens)
    assert window_nll(logits, tokens)[0] == float(token_nll(logits, tokens).sum())


def test_gguf_perplexity_is_unchanged(tiny_llama, tmp_path, text):
    from edgeprune.toolchain.llamacpp import convert_hf_to_gguf

    gguf = tmp_path / "tiny.F16.gguf"
    convert_hf_to_gguf(tiny_llama, gguf, "f16")
    new, old = gguf_perplexity(gguf, text, 64, 3), old_gguf_perplexity(gguf, text, 64, 3)
    assert new == old and new["tokens_scored"] == 3 * 63


def test_one_window_cut_and_its_error():
    assert text_windows(list(range(10)), 4, None) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert text_windows(list(range(10)), 4, 1) == [[0, 1, 2, 3]]
    with pytest.raises(DataError, match="3 tokens, shorter than one window of 4.*smaller quality.ctx"):
        text_windows([1, 2, 3], 4, None, fix="give a longer text or a smaller quality.ctx")
