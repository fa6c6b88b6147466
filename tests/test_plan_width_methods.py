"""The planner calls structural methods by name: depth order from --method, width importance from
--width-method (heads | ffn | taylor); sparsity methods are refused in one line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.config.recipe import Recipe
from edgeprune.errors import ConfigError
from edgeprune.planner.methods import candidate_allowed, resolve_methods


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def fast_recipe(tmp_path, calib):
    """Small calibration, one bench rep, 2 x 128-token perplexity windows, at most 1 of 4 layers."""
    path = tmp_path / "fast.yaml"
    path.write_text(f"""version: 1
name: fast
calibration: {{path: {calib}, samples: 4, seq_len: 64}}
depth: {{method: block-influence, max_removed_fraction: 0.25}}
bench: {{repetitions: 1, warmup: 0}}
quality: {{ctx: 128, windows: 2}}
search: {{quants: [Q4_K_M]}}
max_iterations: 2
""")
    return path


def test_taylor_couples_heads_and_ffn_fractions():
    r = resolve_methods(Recipe.model_validate({"width": {"method": "taylor"}, "search": {"heads_keep": [0.5]}}))
    assert r.search.heads_keep == [0.5, 1.0] and r.search.ffn_keep == [0.5, 1.0]
    # a coupled method shrinks both structures or neither; single-structure methods only their own
    assert candidate_allowed(r, 2, 128) and candidate_allowed(r, None, None)
    assert not candidate_allowed(r, 2, None) and not candidate_allowed(r, None, 128)
    heads = resolve_methods(Recipe.model_validate({"width": {"method": "heads"}, "search": {"heads_keep": [0.5]}}))
    assert candidate_allowed(heads, 2, None) and not candidate_allowed(heads, None, 128)
    legacy = resolve_methods(Recipe.model_validate({"search": {"heads_keep": [0.5], "ffn_keep": [0.5]}}))
    assert candidate_allowed(legacy, 2, None) and candidate_allowed(legacy, 2, 128)


def test_from_prune_or_width_rebuilds_the_width_step():
    from edgeprune.planner.steps import steps_from

    assert "width" in steps_from("prune") and "width" in steps_from("width")
    assert "width" not in steps_from("export")


@pytest.mark.parametrize("update, match", [
    ({"width": {"method": "wanda"}}, "sparsity method.*no smaller or faster.*edgeprune prune --method wanda"),
    ({"depth": {"method": "sparsegpt"}}, "sparsity method"),
    ({"width": {"method": "taylr"}}, "did you mean 'taylor'"),
    ({"depth": {"method": "taylor"}}, "is a width method.*--width-method taylor"),
    ({"width": {"method": "angular"}}, "is a depth method"),
    ({"width": {"method": "heads"}, "search": {"ffn_keep": [0.5]}}, "does not shrink ffn"),
])
def test_bad_method_names_and_kinds_are_refused(update, match):
    with pytest.raises(ConfigError, match=match):
        resolve_methods(Recipe.model_validate(update))


def test_width_method_wanda_is_one_line_exit_2(tiny_llama):
    res = CliRunner().invoke(main, ["plan", "--model", str(tiny_llama), "--width-method", "wanda", "--dry-run"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.count("\n") == 1 and "sparsity method" in res.output and "prune --method wanda" in res.output


def test_dry_run_names_the_methods(tiny_llama, small_calib, tmp_path):
    res = run(["plan", "--model", str(tiny_llama), "--runner", "fake", "--calib", str(small_calib), "--dry-run",
               "--out", str(tmp_path / "o"), "--method", "angular", "--width-method", "taylor", "--heads-keep",
               "1.0,0.5", "--no-stream"])
    assert res.exit_code == 0, res.output
    assert "methods: depth order by angular; width by taylor (heads + ffn, taylor importance" in res.output
    assert "scoring: in memory (forced by --no-stream" in res.output
    assert "heads 2/4 kv 1 ffn 128/256" in res.output  # the coupled candidate is in the predicted grid


@pytest.mark.slow  # a whole planner run on the tiny model with an imatrix per export: 2-3 min
def test_stream_plan_removes_a_layer_and_runs_taylor_width(tokenizer_dir, small_calib, tmp_path, isolated_store):
    """One plan, two checks: the streamed scoring removes the layer in-memory scoring would, and the
    taylor width step runs at the candidate's shape, writing a checkpoint that reloads."""
    import torch
    from conftest import build_tiny
    from transformers import AutoModelForCausalLM

    from edgeprune import registry
    from edgeprune.config.recipe import Calibration
    from edgeprune.store import StepStore, tree_hash
    from edgeprune.stages.score import score_depth
    from edgeprune.targets.gguf_size import ModelShape, gguf_bytes

    # a wide FFN so the width cut is a visible share of the file next to the 49k-token embedding
    tiny = build_tiny(tmp_path / "wide", tokenizer_dir, intermediate_size=2048, tie_word_embeddings=True)
    base = ModelShape.from_config(json.loads((tiny / "config.json").read_text()))
    size = {name: gguf_bytes(shape, "Q4_K_M") for name, shape in {
        "depth": base.pruned(layers=3), "taylor": base.pruned(heads=2, kv_heads=1, ffn=1024),
        "both": base.pruned(layers=3, heads=2, kv_heads=1, ffn=1024)}.items()}
    assert size["both"] < size["taylor"] < size["depth"]
    limit = (size["both"] + size["taylor"]) / 2 / 1e9  # only -1 layer + taylor fits
    out = tmp_path / "out"
    res = run(["plan", "--model", str(tiny), "--runner", "fake", "--recipe", str(fast_recipe(tmp_path, small_calib)),
               "--out", str(out), "--width-method", "taylor", "--heads-keep", "1.0,0.5", "--stream",
               "--max-ppl-ratio", "100", "--latency", "100", "--max-file-gb", f"{limit:.9f}"])
    assert res.exit_code == 0, res.output
    assert "scoring: streamed layer by layer (forced" in res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["plan"]["methods"]["width"] == "taylor" and m["plan"]["methods"]["stream"] is True
    assert m["plan"]["recipe"]["width"]["method"] == "taylor"
    last = m["iterations"][-1]
    assert m["result"]["met"] and last["width_method"] == "taylor" and last["k"] == 1
    assert (last["candidate"]["heads"], last["candidate"]["kv_heads"], last["candidate"]["ffn"]) == (2, 1, 1024)

    # the no-stream scoring path, in its own store, picks the same layer
    calib = Calibration(path=small_calib, samples=4, seq_len=64)
    ref, _ = score_depth(StepStore(tmp_path / "ref"), tiny, tree_hash(tiny), "block-influence", calib, stream=False)
    streamed = torch.load(isolated_store / next(s["dir"] for s in m["steps"] if s["step"] == "score") / "stats.pt")
    torch.testing.assert_close(streamed, ref, rtol=0, atol=1e-5)
    assert last["removed_layers"] == registry.get("depth", "block-influence").select(ref, 1)

    widths = [s for s in m["steps"] if s["step"] == "width"]
    assert len(widths) == 1
    hf = isolated_store / widths[0]["dir"]
    step = json.loads((hf / "step.json").read_text())
    assert step["key"]["method"] == "taylor" and step["meta"]["taylor"]["importance"] == "taylor"
    cfg = json.loads((hf / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["head_dim"]) == (3, 2, 1, 1024, 32)
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (1024, 128)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (2 * 32, 128)
