"""Streamed depth scoring wired into `plan` / `prune`: the auto decision, the score step's
equality with the in-memory path, and layer removal on disk (no model load)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from edgeprune import registry
from edgeprune.cli import main
from edgeprune.config.recipe import Calibration
from edgeprune.errors import ConfigError
from edgeprune.store import StepStore, tree_hash
from edgeprune.stages.score import score_depth
from edgeprune.streaming.policy import STREAM_SHARE, decide_stream
from edgeprune.surgery.layers_disk import layer_renames, remove_layers_on_disk


def test_auto_streams_only_when_the_weights_are_a_large_share_of_free_ram():
    gb = 10**9
    assert not decide_stream(None, "block-influence", 1 * gb, available=10 * gb).stream
    big = decide_stream(None, "angular", int(STREAM_SHARE * 10 * gb) + 1, available=10 * gb)
    assert big.stream and "auto: weights 3,000 MB > 30% of available RAM; available RAM: 10.0 GB" in big.line()
    greedy = decide_stream(None, "ppl-greedy", 9 * gb, available=10 * gb)
    assert not greedy.stream and "ppl-greedy cannot stream" in greedy.reason
    assert not decide_stream(False, "angular", 9 * gb, available=10 * gb).stream
    assert decide_stream(True, "angular", 1, available=10 * gb).stream
    with pytest.raises(ConfigError, match="ppl-greedy cannot stream.*--no-stream"):
        decide_stream(True, "ppl-greedy", 1, available=10 * gb)


def test_two_identical_plans_have_equal_records_whatever_ram_is_free(tiny_llama, monkeypatch):
    """The plan record (manifest "plan") holds what the inputs decide; free RAM goes to "environment".
    Mutant caught: the free-RAM figure back in StreamDecision.reason (it was "... 24.1 GB available
    RAM" against "24.2 GB" in the slow kill-and-resume test, so identical plans never compared equal)."""
    from edgeprune.planner.run import build_plan
    from edgeprune.streaming import policy as stream_policy

    records, environments = [], []
    for free_gb in (24.1, 24.2):
        monkeypatch.setattr(stream_policy, "available_bytes", lambda gb=free_gb: int(gb * 10**9))
        plan = build_plan(str(tiny_llama), "host", "default", "out", {}, {})
        records.append(json.loads(json.dumps(plan.to_dict(), default=str)))
        environments.append(plan.environment)
    assert records[0] == records[1]
    assert "available RAM" in records[0]["methods"]["scoring"]
    assert environments == [{"stream_decision": "available RAM: 24.1 GB"},
                            {"stream_decision": "available RAM: 24.2 GB"}]


def test_weight_bytes_are_what_scoring_would_hold(tiny_llama):
    from edgeprune.streaming.policy import weight_bytes
    from edgeprune.toolchain.hf import default_model_path

    assert weight_bytes(tiny_llama) == (tiny_llama / "model.safetensors").stat().st_size
    # the default Q4_1 GGUF is dequantized to float32 by the import: SmolLM2-135M's 134,515,008 params
    assert weight_bytes(default_model_path()) == 4 * 134_515_008


def test_layer_renames_drop_and_renumber():
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight",
             "model.layers.2.mlp.up_proj.weight", "model.layers.10.input_layernorm.weight", "lm_head.weight"]
    got = layer_renames(names, [1], 11)
    assert got == {"model.embed_tokens.weight": "model.embed_tokens.weight",
                   "model.layers.0.mlp.up_proj.weight": "model.layers.0.mlp.up_proj.weight",
                   "model.layers.2.mlp.up_proj.weight": "model.layers.1.mlp.up_proj.weight",
                   "model.layers.10.input_layernorm.weight": "model.layers.9.input_layernorm.weight",
                   "lm_head.weight": "lm_head.weight"}
    with pytest.raises(ConfigError):
        layer_renames(names, [11], 11)


@pytest.mark.parametrize("method", ["block-influence", "angular"])
def test_streamed_score_step_equals_in_memory(tiny_llama, small_calib, tmp_path, method):
    calib = Calibration(path=small_calib, samples=4, seq_len=64)
    digest = tree_hash(tiny_llama)
    mem, mem_res = score_depth(StepStore(tmp_path / "a"), tiny_llama, digest, method, calib, stream=False)
    got, res = score_depth(StepStore(tmp_path / "b"), tiny_llama, digest, method, calib, stream=True)
    assert res.meta["streamed"] and not mem_res.meta["streamed"]
    torch.testing.assert_close(got, mem, rtol=0, atol=1e-5)
    assert max(abs(a - b) for a, b in zip(res.meta["layer_scores"], mem_res.meta["layer_scores"])) < 1e-5
    m = registry.get("depth", method)
    assert all(m.select(got, k) == m.select(mem, k) for k in range(1, 4))
    # same key either way: a streamed run reuses an in-memory result (they agree)
    assert res.path.name == mem_res.path.name


def test_remove_layers_on_disk_matches_in_memory_surgery(tiny_llama, tmp_path):
    from edgeprune.stages.load import CHECKPOINT_FILES
    from edgeprune.surgery.layers import remove_layers
    from edgeprune.toolchain.hf import load_model

    out = tmp_path / "disk"
    out.mkdir()
    info = remove_layers_on_disk(tiny_llama, out, [1, 2], CHECKPOINT_FILES)
    assert info["layers_after"] == 2 and (out / "tokenizer.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["head_dim"] == 32
    disk, _ = load_model(out)  # from_pretrained, strict about missing / unexpected tensors
    mem, _ = load_model(tiny_llama)
    remove_layers(mem, [1, 2])
    ids = torch.randint(0, 1000, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(disk(ids).logits, mem(ids).logits, rtol=0, atol=0)


def test_prune_stream_cli_matches_no_stream(tiny_llama, small_calib, tmp_path):
    outs = {}
    for flag in ("--stream", "--no-stream"):
        res = CliRunner().invoke(main, ["prune", "--model", str(tiny_llama), "--method", "block-influence",
                                        "--remove", "1", "--calib", str(small_calib), flag,
                                        "--out", str(tmp_path / flag)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        outs[flag] = json.loads(res.output[res.output.index("{"):])
    assert outs["--stream"]["scoring"].startswith("scoring: streamed layer by layer")
    assert outs["--no-stream"]["scoring"].startswith("scoring: in memory")
    assert outs["--stream"]["removed"] == outs["--no-stream"]["removed"]
    assert json.loads((tmp_path / "--stream" / "config.json").read_text())["num_hidden_layers"] == 3


@pytest.mark.parametrize("args, match", [
    (["--method", "ppl-greedy", "--remove", "1"], "ppl-greedy cannot stream"),
    (["--method", "taylor", "--fraction", "0.3"], "taylor cannot stream: its taylor importance back-propagates"),
])
def test_forced_stream_of_a_method_that_cannot_is_one_line(tiny_llama, tmp_path, args, match):
    res = CliRunner().invoke(main, ["prune", "--model", str(tiny_llama), *args, "--stream", "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and match in res.output
    assert not (tmp_path / "o").exists()
