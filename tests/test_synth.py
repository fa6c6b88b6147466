"""`edgeprune synth`: random-weight checkpoints of real Llama shapes.

The parameter counts are checked against the Hub's published totals (model cards / safetensors
metadata of meta-llama/Llama-3.2-1B, -3B, Llama-3.1-8B) minus the vocabulary rows the default
tokenizer drops: 128,256 -> 49,152 rows, once for tied embeddings, twice for untied."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from edgeprune.cli import main
from edgeprune.toolchain import synth

HUB_PARAMS = {"llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824, "llama-3.1-8b": 8_030_261_248}
TINY = synth.Shape("tiny", hidden=64, layers=3, heads=4, kv_heads=2, intermediate=96, tied=False, rope_factor=8.0)


@pytest.mark.parametrize("name", sorted(HUB_PARAMS))
def test_shapes_match_the_hub_counts_less_the_vocabulary(name):
    s = synth.SHAPES[name]
    ours = sum(math.prod(shape) for _, shape in synth.tensor_shapes(s, 49152))
    dropped = (128256 - 49152) * s.hidden * (1 if s.tied else 2)
    assert ours == HUB_PARAMS[name] - dropped


def test_shards_index_and_seeded_draws(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    info = synth.write_checkpoint(TINY, 128, a, seed=1, max_shard=40_000)
    synth.write_checkpoint(TINY, 128, b, seed=1, max_shard=40_000)
    synth.write_checkpoint(TINY, 128, c, seed=2, max_shard=40_000)
    assert len(info["shards"]) > 1 and info["shards"][0].endswith(f"-of-{len(info['shards']):05d}.safetensors")
    index = json.loads((a / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == info["weight_bytes"] == 2 * info["params"]
    assert set(index["weight_map"]) == {n for n, _ in synth.tensor_shapes(TINY, 128)}
    for shard in info["shards"]:  # every shard is whole, bf16, the same bytes for the same seed
        assert (a / shard).read_bytes() == (b / shard).read_bytes()
        assert (a / shard).read_bytes() != (c / shard).read_bytes()
        with safe_open(a / shard, "pt") as fh:
            for k in fh.keys():
                t = fh.get_tensor(k)
                assert t.dtype == torch.bfloat16
                if k.endswith("norm.weight"):
                    assert torch.all(t == 1)
                else:
                    assert 0.015 < t.float().std() < 0.025


def test_synth_command_writes_a_loadable_checkpoint(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeprune.commands.synth import synth_command

    monkeypatch.setitem(synth.SHAPES, "tiny", TINY)
    out = tmp_path / "m"
    info = synth_command("tiny", out, seed=0, max_shard=100_000)
    assert info["vocab_size"] == 49152 and len(info["shards"]) > 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synth-")]  # temp folder renamed away
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == 49152 and model.config.num_key_value_heads == 2
    assert sum(p.numel() for p in model.parameters()) == info["params"]
    ids = tok("The tower is tall", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_bad_shape_and_occupied_out_are_one_line_errors(tmp_path):
    res = CliRunner().invoke(main, ["synth", "--shape", "llama-9b", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "llama-3.1-8b" in res.output
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["synth", "--shape", "llama-3.2-1b", "--out", str(taken)])
    assert res.exit_code == 2 and "never overwrites" in res.output and len(res.output.strip().splitlines()) == 1
    assert (taken / "keep.txt").read_text() == "mine"
