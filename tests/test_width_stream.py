"""Width pruning streamed from disk (`prune --method heads|ffn --stream`): the same scores, decision
and checkpoint as the in-memory path, the stored dtype kept, and one-line refusals of what cannot
stream. The tiny model (conftest.TINY) is GQA: 4 query heads reading 2 KV groups."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from edgeprune import registry
from edgeprune.cli import main
from edgeprune.errors import ConfigError, ModelError
from edgeprune.methods.width import WidthMethod, WidthShape
from edgeprune.stages.prune_methods import prune_by_name
from edgeprune.stages.width import activation_scores, streamed_activation_scores
from edgeprune.streaming import policy
from edgeprune.surgery import width_disk
from edgeprune.surgery.ffn import keep_ffn_channels
from edgeprune.surgery.heads import keep_heads
from edgeprune.surgery.record import RECORD
from edgeprune.toolchain.checkpoint import checkpoint_tensors
from edgeprune.toolchain.hf import load_model

IDS = torch.randint(0, 2000, (2, 24), generator=torch.Generator().manual_seed(3))
CUTS = [("heads", 0.5, "groups"), ("heads", 0.5, "per-group"), ("ffn", 0.5, "groups")]


@pytest.fixture(scope="module")
def windows():
    return torch.randint(0, 2000, (6, 32), generator=torch.Generator().manual_seed(1))  # last batch of 4 is partial


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _assert_same_logits(folder, reference) -> None:
    """The checkpoint in `folder` loads (strict about shapes) and computes what `reference` does."""
    model, _ = load_model(folder)
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=0, atol=1e-5)


def test_streamed_scores_and_decisions_equal_in_memory(tiny_llama, windows):
    model, _ = load_model(tiny_llama)
    mem = activation_scores(model, windows)
    got = streamed_activation_scores(tiny_llama, windows)
    assert got["heads"].min() > 0 and got["ffn"].min() > 0  # every unit was seen
    for key in ("heads", "kv", "ffn"):
        torch.testing.assert_close(got[key], mem[key], rtol=1e-6, atol=1e-9)
    shape = WidthShape.of(model.config)
    for name, fraction, mode in CUTS:
        m = registry.get("width", name)
        cut = m.cut(shape, fraction, mode)
        assert m.decide(got, shape, cut) == m.decide(mem, shape, cut)


@pytest.mark.parametrize("name, fraction, mode", CUTS)
def test_streamed_prune_equals_in_memory_prune(tiny_llama, small_calib, tmp_path, name, fraction, mode):
    """Same decision, record and report; the streamed checkpoint computes the in-memory one's logits."""
    run = {flag: prune_by_name(str(tiny_llama), name, str(small_calib), tmp_path / str(flag), fraction=fraction,
                               head_mode=mode, stream=flag) for flag in (True, False)}
    assert run[True]["scoring"].startswith("scoring: streamed layer by layer (forced")
    assert run[False]["scoring"].startswith("scoring: in memory (forced")
    same = [{k: v for k, v in run[flag].items() if k not in ("prune_s", "out", "scoring")} for flag in (True, False)]
    assert same[0] == same[1]
    records = [json.loads((tmp_path / str(flag) / RECORD).read_text()) for flag in (True, False)]
    assert records[0]["removed"] == records[1]["removed"] and records[0]["options"] == records[1]["options"]
    streamed = tmp_path / "True"
    assert sorted(f.name for f in streamed.glob("*.safetensors")) == ["model.safetensors"]
    assert (streamed / "tokenizer.json").is_file()
    mem, _ = load_model(tmp_path / "False")
    _assert_same_logits(streamed, mem)


def _disk_vs_memory(tiny_llama, tmp_path, decision: dict) -> None:
    out = tmp_path / "disk"
    out.mkdir()
    info = width_disk.keep_width_on_disk(tiny_llama, out, decision, ("tokenizer.json",))
    mem, _ = load_model(tiny_llama)
    keep_heads(mem, decision["heads"])
    keep_ffn_channels(mem, decision["ffn"])
    assert info["layer_params_after"] == sum(p.numel() for p in mem.model.layers.parameters())
    _assert_same_logits(out, mem)


# a different choice in every layer, heads and channels together (no built-in streamable method
# cuts both, so the surgery is checked on its own)
BOTH = {"heads": [[0, 1], [2, 3], [2, 3], [0, 1]],
        "ffn": [sorted(torch.randperm(256, generator=torch.Generator().manual_seed(i))[:96].tolist())
                for i in range(4)]}


def test_disk_surgery_equals_in_memory_surgery(tiny_llama, tmp_path):
    _disk_vs_memory(tiny_llama, tmp_path, BOTH)


def _o_proj_rows(shape, heads):
    """Mutant: o_proj sliced along its rows (the hidden size) instead of its head columns."""
    out = REAL_HEAD_SLICES(shape, heads)
    _dim, idx, before = out["self_attn.o_proj.weight"]
    out["self_attn.o_proj.weight"] = (0, idx, before)
    return out


def _o_proj_dropped_heads(shape, heads):
    """Mutant: o_proj keeps the columns of the heads that go (right shape, wrong weights)."""
    out = REAL_HEAD_SLICES(shape, heads)
    dim, idx, before = out["self_attn.o_proj.weight"]
    out["self_attn.o_proj.weight"] = (dim, torch.tensor(sorted(set(range(before)) - set(idx.tolist()))), before)
    return out


REAL_HEAD_SLICES = width_disk.head_slices


@pytest.mark.parametrize("mutant, error, match", [(_o_proj_rows, ModelError, "ignore_mismatched_sizes"),
                                                   (_o_proj_dropped_heads, AssertionError, "not close")])
def test_the_logits_check_catches_wrong_o_proj_slices(tiny_llama, tmp_path, monkeypatch, mutant, error, match):
    """Guard: the comparison above fails when o_proj is cut the wrong way. Slicing its rows gives a
    (64, 128) matrix that transformers refuses to load; keeping the dropped heads' columns loads and
    computes other logits."""
    monkeypatch.setattr(width_disk, "head_slices", mutant)
    with pytest.raises(error, match=match):
        _disk_vs_memory(tiny_llama, tmp_path, BOTH)


def _bf16_sharded_copy(src, dst):
    """`src` in bfloat16, split across two shards with an index, as the Hub ships an 8B model."""
    from safetensors.torch import load_file, save_file

    state = {k: v.to(torch.bfloat16) for k, v in load_file(src / "model.safetensors").items()}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    dst.mkdir()
    for fname, keys in shards.items():
        save_file({k: state[k] for k in keys}, dst / fname, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16", "dtype": "bfloat16"}))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copyfile(f, dst / f.name)
    return state


def test_a_bf16_sharded_source_stays_bf16(tiny_llama, small_calib, tmp_path):
    source = _bf16_sharded_copy(tiny_llama, tmp_path / "bf16")
    info = prune_by_name(str(tmp_path / "bf16"), "heads", str(small_calib), tmp_path / "out", fraction=0.5,
                         stream=True)
    out = tmp_path / "out"
    assert not (out / "model.safetensors.index.json").exists()
    tensors = checkpoint_tensors(out)
    assert {t["dtype"] for t in tensors.values()} == {"BF16"} and tensors.keys() == source.keys()
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == info["num_key_value_heads"] == 1
    from safetensors.torch import load_file

    got = load_file(out / "model.safetensors")
    kept = json.loads((out / RECORD).read_text())["removed"]["kv_groups"]
    for layer, gone in enumerate(kept):  # the kept group's k rows, bit for bit
        group = 1 - gone[0]
        name = f"model.layers.{layer}.self_attn.k_proj.weight"
        assert torch.equal(got[name], source[name][group * 32:(group + 1) * 32])
    assert torch.equal(got["model.embed_tokens.weight"], source["model.embed_tokens.weight"])


def test_auto_streams_width_when_the_weights_are_a_large_share_of_free_ram(tiny_llama, small_calib, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(policy, "available_bytes", lambda: 1000)
    info = prune_by_name(str(tiny_llama), "ffn", str(small_calib), tmp_path / "o", fraction=0.5)
    assert info["scoring"].startswith("scoring: streamed layer by layer (auto: weights")
    gb = 10**9
    taylor = registry.get("width", "taylor")
    big = policy.decide_width_stream(None, taylor, None, 9 * gb, available=10 * gb)
    assert not big.stream and "taylor cannot stream" in big.reason
    assert not policy.decide_width_stream(None, registry.get("width", "heads"), None, 1 * gb, available=10 * gb).stream


def test_own_scorers_and_taylor_importance_cannot_stream():
    heads = registry.get("width", "heads")
    own = WidthMethod("own", "x", ("heads",), "activation", "x", heads.cut, score=lambda model, windows: {})
    assert "own function" in policy.width_stream_refusal(own)
    assert policy.width_stream_refusal(own, "activation") is None  # --importance overrides the own scorer
    assert "back-propagates" in policy.width_stream_refusal(heads, "taylor")
    assert policy.width_stream_refusal(heads) is None
    with pytest.raises(ConfigError, match="own cannot stream.*fix: use --no-stream, or a streamable width method "
                                          r"\(ffn, heads\)"):
        policy.check_width_streamable(own)


@pytest.mark.parametrize("args, match", [
    (["--method", "taylor", "--fraction", "0.3"],
     "taylor cannot stream: its taylor importance back-propagates the calibration loss through the whole model"),
    (["--method", "heads", "--fraction", "0.5", "--importance", "taylor"], "fix: drop --importance taylor"),
    (["--method", "wanda", "--sparsity", "0.5"], "wanda cannot stream: sparsity methods"),
])
def test_forced_stream_of_a_width_method_that_cannot_is_one_line(tiny_llama, tmp_path, args, match):
    res = CliRunner().invoke(main, ["prune", "--model", str(tiny_llama), *args, "--stream", "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and match in res.output, res.output
    assert not (tmp_path / "o").exists()
