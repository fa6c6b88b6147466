"""Layer removal keeps a standard checkpoint; the GGUF round trip agrees with HF logits."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from edgeprune.config.recipe import Export
from edgeprune.errors import ConfigError
from edgeprune.store import StepStore
from edgeprune.stages.export import compare_logits, export_gguf
from edgeprune.surgery.layers import remove_layers
from edgeprune.toolchain import llamacpp
from edgeprune.toolchain.hf import load_model, save_model

IDS = torch.tensor([[1, 450, 3012, 17, 5, 900, 42, 7]])


def test_removed_layers_reload_with_identical_logits(tiny_llama, tmp_path):
    model, tok = load_model(tiny_llama)
    kept = [model.model.layers[i] for i in (0, 3)]
    remove_layers(model, [1, 2])
    assert list(model.model.layers) == kept
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    with torch.no_grad():
        before = model(IDS).logits
    save_model(model, tok, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert reloaded.config.num_hidden_layers == 2
    assert reloaded.config.num_key_value_heads == 2 and reloaded.config.head_dim == 32
    with torch.no_grad():
        after = reloaded(IDS).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    # generation with the KV cache uses renumbered layer_idx: must match the cache-less forward
    with torch.no_grad():
        out = reloaded.generate(IDS, max_new_tokens=4, do_sample=False)
        manual = IDS
        for _ in range(4):
            nxt = reloaded(manual).logits[:, -1].argmax(-1, keepdim=True)
            manual = torch.cat([manual, nxt], 1)
    assert torch.equal(out, manual)


def test_remove_layers_rejects_bad_requests(tiny_llama):
    model, _ = load_model(tiny_llama)
    with pytest.raises(ConfigError, match="out of range"):
        remove_layers(model, [4])
    with pytest.raises(ConfigError, match="cannot remove all 4 layers"):
        remove_layers(model, [0, 1, 2, 3])


def test_compare_logits_measures_disagreement():
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    same = compare_logits(a, a)
    assert same["cos_min"] == pytest.approx(1.0) and same["kld_mean"] == pytest.approx(0.0, abs=1e-12)
    flipped = compare_logits(a, a[:, ::-1].copy())
    assert flipped["top1_agree"] == 0.0 and flipped["kld_mean"] > 0.5


def test_gguf_round_trip_of_tiny_model(tiny_llama, tmp_path):
    store = StepStore(tmp_path / "store")
    gguf, meta = export_gguf(store, tiny_llama, "tiny", Export(quant="Q4_K_M"))
    v = meta["verify"]
    assert gguf.is_file() and gguf.name == "model.Q4_K_M.gguf"
    assert v["gguf"]["llama.block_count"] == 4
    assert v["gguf"]["llama.attention.head_count_kv"] == 2
    assert v["hf_vs_f16"]["cos_min"] > 0.999
    assert v["hf_vs_f16"]["top1_agree"] == 1.0
    assert v["quant_vs_f16"]["kld_mean"] < 0.5
    assert not (gguf.parent / "converted.F16.gguf").exists()
    # the quantized file runs in llama.cpp and agrees with the tiny HF model on the top token
    model, _ = load_model(tiny_llama)
    with torch.no_grad():
        ref = model(IDS).logits[0].numpy()
    got = llamacpp.gguf_logits(gguf, IDS[0].tolist())
    assert compare_logits(ref, got)["cos_min"] > 0.95
    # a second export of the same input is a cache hit (same directory, not rebuilt)
    again, _ = export_gguf(store, tiny_llama, "tiny", Export(quant="Q4_K_M"))
    assert again == gguf and store.log[-1]["cache_hit"]


def test_export_to_f16_does_not_read_its_own_output(tiny_llama, tmp_path):
    """--quant F16 writes model.F16.gguf; the converter's intermediate once had that name too, so the
    quantizer truncated its own input and the process died without a word."""
    gguf, meta = export_gguf(StepStore(tmp_path / "store"), tiny_llama, "tiny", Export(quant="F16", imatrix=False))
    assert gguf.name == "model.F16.gguf" and meta["verify"]["quant_vs_f16"]["kld_mean"] < 1e-3
