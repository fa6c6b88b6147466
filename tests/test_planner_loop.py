"""The planner loop on the tiny model: joint quant x depth search with the fake runner, and the
width step the search uses for heads/FFN candidates."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.config.recipe import Calibration
from edgeprune.store import StepStore
from edgeprune.stages.width_step import prune_width_step, width_fractions
from edgeprune.targets.costmodel import Candidate
from edgeprune.targets.gguf_size import ModelShape, gguf_bytes


def test_width_step_removes_whole_gqa_groups_and_aligned_channels(tiny_llama, small_calib, tmp_path):
    cfg = json.loads((tiny_llama / "config.json").read_text())
    assert width_fractions(cfg, 2, 1, 128) == (0.5, 0.5)  # 1 of 2 KV groups, 128 of 256 channels
    out, _ = prune_width_step(StepStore(tmp_path / "s"), tiny_llama, "tiny", heads=2, kv_heads=1, ffn=128,
                              calib=Calibration(path=small_calib, samples=4, seq_len=64))
    got = json.loads((out / "config.json").read_text())
    assert (got["num_attention_heads"], got["num_key_value_heads"], got["intermediate_size"]) == (2, 1, 128)
    # the cost model priced exactly the shape the step produced
    base = ModelShape.from_config(cfg)
    assert Candidate(0, 2, 128, "Q4_K_M", 1).shape(base) == ModelShape.from_config(got)


@pytest.mark.slow  # 3-5 exports of the tiny model: ~1.5 min idle, ~5 min on the shared 2 cores
def test_joint_search_meets_a_budget_and_labels_every_number(tokenizer_dir, small_calib, tmp_path):
    from conftest import build_tiny

    # Tied embeddings: the fake runner's speed ~ 1 / file size then matches a memory-bound decode
    # (an untied token_embd is in the file but not read per token, which the cost model knows).
    tiny = build_tiny(tmp_path / "tied", tokenizer_dir, tie_word_embeddings=True)
    base = ModelShape.from_config(json.loads((tiny / "config.json").read_text()))
    # the fake runner's latency is 106.4 s per GB of file; the size model predicts the file exactly
    budget = 0.98 * 106.4 * gguf_bytes(base, "Q4_K_M") / 2e9
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["plan", "--model", str(tiny), "--runner", "fake", "--calib", str(small_calib),
                                    "--out", str(out), "--max-ppl-ratio", "5", "--latency", f"{budget:.6f}"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    its = m["iterations"]
    assert m["result"]["met"] and 2 <= len(its) <= 5  # baseline + at most max_iterations candidates
    assert not its[0]["checks"]["latency_s"]["met"] and its[-1]["checks"]["latency_s"]["met"]
    for it in its:
        assert it["predicted"]["kind"] == "predicted" and "calibration samples" in it["predicted"]["by"]
        assert it["measured_where"]["runner"] == "fake" and it["measured_where"]["kind"].startswith("synthetic")
        assert abs(it["prediction_error_pct"]["file_bytes"]) < 1.0
    assert m["search"] and m["search"][0]["front"] and m["search"][0]["choice"]["kind"] == "predicted"
    assert (out / m["result"]["artifact"]).name.endswith(f".{its[-1]['quant']}.gguf")
