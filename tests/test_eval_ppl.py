"""Perplexity and KLD of the tiny model: HF equals a hand computation; GGUF sees the same tokens."""

import math

import pytest
import torch

from edgeprune.stages.quality import compare_to_parent, model_perplexity

TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
        "structure in Paris. Its base is square, measuring 125 metres on each side.")


def hand_ppl(model_dir, text, ctx, windows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nll, n = 0.0, 0
    for w in range(windows):
        win = ids[w * ctx:(w + 1) * ctx]
        with torch.no_grad():
            logits = model(torch.tensor([win])).logits[0].double()
        for i in range(1, len(win)):  # token i from its in-window prefix, one at a time
            nll -= float(logits[i - 1].log_softmax(-1)[win[i]])
            n += 1
    return math.exp(nll / n), n


def test_hf_perplexity_equals_hand_computation(tiny_llama):
    got = model_perplexity(tiny_llama, TEXT, ctx=8, windows=3)
    want, n = hand_ppl(tiny_llama, TEXT, 8, 3)
    assert got["tokens_scored"] == n == 3 * 7
    assert got["ppl"] == pytest.approx(want, rel=1e-5)
    assert got["ppl"] > 1000  # random weights: near-uniform over the 49k vocab, so this can fail


@pytest.fixture(scope="module")
def tiny_f16_gguf(tiny_llama, tmp_path_factory):
    from edgeprune.toolchain.llamacpp import convert_hf_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny.F16.gguf"
    convert_hf_to_gguf(tiny_llama, out, "f16")
    return out


def test_gguf_and_hf_agree_on_same_tokens_and_kld(tiny_llama, tiny_f16_gguf):
    hf = model_perplexity(tiny_llama, TEXT, ctx=8, windows=3)
    gg = model_perplexity(tiny_f16_gguf, TEXT, ctx=8, windows=3)
    assert gg["total_tokens"] == hf["total_tokens"]  # llama.cpp and HF tokenizers give the same ids
    assert gg["ppl"] == pytest.approx(hf["ppl"], rel=0.02)  # F16 weights vs fp32
    same = compare_to_parent(tiny_f16_gguf, tiny_f16_gguf, TEXT, ctx=8, windows=3)
    assert same["kld_mean"] == pytest.approx(0.0, abs=1e-9) and same["top1_agree"] == 1.0
    cross = compare_to_parent(tiny_f16_gguf, tiny_llama, TEXT, ctx=8, windows=3)
    assert 0 < cross["kld_mean"] < 1e-3 and cross["parent_ppl"] == pytest.approx(hf["ppl"], rel=1e-5)
