"""Head / MLP-channel pruning: importance maths on hand-made tensors, surgery round trips."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from edgeprune import registry
from edgeprune.config.recipe import Export
from edgeprune.errors import ConfigError
from edgeprune.methods.width import (aligned_keep, channel_contribution_sq, coupled_counts, head_contribution_sq,
                                     keep_heads_per_group, keep_kv_groups, taylor_saliency,
                                     taylor_second_order)
from edgeprune.store import StepStore
from edgeprune.stages.export import export_gguf
from edgeprune.stages.width import prune_width, taylor_scores
from edgeprune.surgery.ffn import keep_ffn_channels
from edgeprune.surgery.heads import keep_heads
from edgeprune.toolchain import llamacpp
from edgeprune.toolchain.hf import load_model, save_model

IDS = torch.tensor([[1, 450, 3012, 17, 5, 900, 42, 7]])


def test_head_contribution_counts_only_each_heads_columns():
    ctx = torch.tensor([[1.0, 0.0, 0.0, 2.0]])         # 2 heads of dim 2
    w_o = torch.tensor([[1.0, 5.0, 0.0, 0.0],
                        [0.0, 0.0, 0.0, 3.0]])        # head 0 -> out 0, head 1 -> out 1
    assert head_contribution_sq(ctx, w_o, 2).tolist() == pytest.approx([1.0, 36.0])
    act = torch.tensor([[1.0, 2.0], [1.0, 0.0]])
    w_down = torch.tensor([[3.0, 1.0], [4.0, 0.0]])
    assert channel_contribution_sq(act, w_down).tolist() == pytest.approx([2 * 25.0, 4 * 1.0])


def test_taylor_saliency_sums_slices():
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0], [1.0, 1.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 1.0], [1.0, -1.0], [2.0, 0.0], [5.0, 5.0]])
    assert taylor_saliency(w, g, 0, 2).tolist() == pytest.approx([1 + 2 + 3 + 4, 2 + 0 + 0 + 5])
    assert taylor_saliency(w, g, 1, 1).tolist() == pytest.approx([1 + 3 + 2 + 0, 2 + 4 + 0 + 5])


def test_taylor_second_order_squares_then_sums_slices():
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0], [1.0, 1.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 1.0], [1.0, -1.0], [2.0, 0.0], [5.0, 5.0]])
    assert taylor_second_order(w, g, 0, 2).tolist() == pytest.approx([1 + 4 + 9 + 16, 4 + 0 + 0 + 25])
    assert taylor_second_order(w, g, 1, 1).tolist() == pytest.approx([1 + 9 + 4 + 0, 4 + 16 + 0 + 25])


def test_taylor_scores_sum_per_window_squares_not_the_square_of_the_sum(tiny_llama):
    model, _ = load_model(tiny_llama)
    torch.manual_seed(0)
    windows = torch.randint(0, 2000, (3, 16))
    scores = taylor_scores(model, windows)
    o = model.model.layers[2].self_attn.o_proj.weight
    q = model.model.layers[2].self_attn.q_proj.weight
    hd = model.config.head_dim
    expected = 0.0
    q.requires_grad_(True)
    o.requires_grad_(True)
    for w in range(3):  # by hand: head 1 of layer 2, one backward per window
        ids = windows[w:w + 1]
        gq, go = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, [q, o])
        expected += float(((q * gq)[hd:2 * hd] ** 2).sum() + ((o * go)[:, hd:2 * hd] ** 2).sum())
    # the square of the summed gradient would differ: each window is its own Fisher sample
    assert float(scores["heads"][2, 1]) == pytest.approx(expected, rel=1e-4)
    assert torch.all(scores["kv"] == 0) and torch.all(scores["ffn"] > 0)


def test_gqa_choices_keep_whole_groups_or_equal_heads_per_group():
    # 1 layer, 6 heads in 3 KV groups of 2
    heads = torch.tensor([[5.0, 5.0, 0.1, 0.2, 3.0, 0.0]])
    kv = torch.zeros(1, 3)
    assert keep_kv_groups(heads, kv, 1) == [[0, 1, 4, 5]]              # group 1 (heads 2, 3) is weakest
    assert keep_heads_per_group(heads, 3, 1) == [[0, 3, 4]]           # the best head of every group
    with pytest.raises(ConfigError, match="cannot remove 3 of 3 KV groups"):
        keep_kv_groups(heads, kv, 3)


def test_alignment_and_coupled_counts():
    assert aligned_keep(1536, 0.2, 32) == 1216 and aligned_keep(1536, 0.4, 32) == 928
    # SmolLM2 shapes: 20 % of a layer = 1 query head per group + the rest from the MLP
    per_group, keep = coupled_counts(576, 9, 3, 64, 1536, 0.2, 32)
    assert per_group == 1 and keep == 1248


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_head_surgery_equals_masking_the_heads(tiny_llama, tmp_path):
    model, tok = load_model(tiny_llama)
    # zeroing the dropped heads' o_proj columns (and group 1's k/v) is what removal must reproduce
    ref_model, _ = load_model(tiny_llama)
    for layer in ref_model.model.layers:
        layer.self_attn.o_proj.weight.data[:, 64:] = 0     # heads 2, 3 = KV group 1
    keep_heads(model, [[0, 1]] * 4)
    save_model(model, tok, tmp_path / "h")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "h")
    cfg = reloaded.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 32)
    torch.testing.assert_close(_logits(reloaded), _logits(ref_model), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="unequal numbers"):
        keep_heads(load_model(tiny_llama)[0], [[0, 1, 2]] * 4)
    with pytest.raises(ConfigError, match="different head shapes"):
        keep_heads(load_model(tiny_llama)[0], [[0, 1], [0, 2], [0, 2], [0, 2]])


def test_ffn_surgery_equals_zeroing_channels(tiny_llama, tmp_path):
    model, tok = load_model(tiny_llama)
    ref_model, _ = load_model(tiny_llama)
    keep = list(range(0, 256, 2))
    for layer in ref_model.model.layers:
        layer.mlp.down_proj.weight.data[:, 1::2] = 0
    keep_ffn_channels(model, [keep] * 4)
    save_model(model, tok, tmp_path / "f")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "f")
    assert reloaded.config.intermediate_size == 128
    torch.testing.assert_close(_logits(reloaded), _logits(ref_model), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,kw,shape", [
    ("heads", dict(fraction=0.5), (2, 1, 256)),
    ("heads", dict(fraction=0.5, head_mode="per-group", importance="taylor"), (2, 2, 256)),
    ("ffn", dict(fraction=0.25), (4, 2, 192)),
    ("taylor", dict(fraction=0.3), (2, 2, 192)),  # 1 head per group + 64 channels ~ 30 %
])
def test_width_methods_export_to_gguf_and_run(tiny_llama, tmp_path, name, kw, shape):
    model, tok = load_model(tiny_llama)
    windows = torch.randint(0, 2000, (4, 16))
    info = prune_width(model, windows, name, **kw)
    assert (info["num_attention_heads"], info["num_key_value_heads"], info["intermediate_size"]) == shape
    assert 0 < info["removed_fraction"] < 1
    out = tmp_path / name
    save_model(model, tok, out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=1e-5, atol=1e-5)
    # export verifies HF vs F16 GGUF logits (cos >= 0.995) and reloads the quantized file
    gguf, meta = export_gguf(StepStore(tmp_path / "store"), out, name, Export(quant="Q8_0"))
    assert meta["verify"]["gguf"]["llama.attention.head_count"] == shape[0]
    assert meta["verify"]["gguf"]["llama.attention.head_count_kv"] == shape[1]
    assert meta["verify"]["gguf"]["llama.feed_forward_length"] == shape[2]
    assert llamacpp.gguf_logits(gguf, IDS[0].tolist()).shape[0] == IDS.shape[1]


def test_width_typo_answers_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'heads'"):
        registry.get("width", "haeds")
