"""The heal stage end to end on the tiny Llama: `prune --heal`, its errors, and the planner's heal step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.cli import main


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    from conftest import c4_lines

    path = tmp_path_factory.mktemp("healcalib") / "calib.jsonl"
    path.write_text("\n".join(c4_lines(12)) + "\n", encoding="utf-8")  # ~10 windows of 512: a quick heal
    return path


def test_prune_heal_auto_publishes_a_healed_plain_checkpoint(tiny_llama, calib, tmp_path):
    out = tmp_path / "healed"
    res = CliRunner().invoke(main, ["prune", "--model", str(tiny_llama), "--method", "block-influence", "--remove", "1",
                                    "--calib", str(calib), "--heal", "auto", "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "edgeprune-pruned.json").read_text())
    heal = record["heal"]
    assert heal["method"] == "auto" and {t["method"] for t in heal["trials"]} == {"down-span", "down-cut",
                                                                                  "replaceme-relative"}
    losses = heal["holdout_nll"]
    # auto keeps the lowest held-out loss, and never a model worse than the unhealed one
    assert heal["chosen"] == min(losses, key=lambda k: losses[k] if k != "teacher" else float("inf"))
    assert losses[heal["chosen"]] <= losses["none"]
    assert record["removed"]["layers"] == heal["removed"] and len(heal["removed"]) == 1
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 3
    assert not list(tmp_path.glob(".heal-*"))  # the temp folder is gone


def test_prune_heal_refuses_sparsity_and_typos_in_one_line(tiny_llama, calib, tmp_path):
    for args, words in ((["--method", "wanda", "--sparsity", "0.5", "--heal", "down-cut"], "would fill in"),
                        (["--method", "block-influence", "--remove", "1", "--heal", "down-cutt"], "did you mean 'down-cut'"),
                        (["--method", "block-influence", "--remove", "1", "--heal-minutes", "1", "2"],
                         "no --heal was given"),
                        (["--method", "block-influence", "--remove", "1", "--heal", "down-cut", "--heal-text",
                          str(calib)], "gives it no time"),
                        (["--method", "block-influence", "--remove", "1", "--heal", "down-cut", "--heal-minutes", "0",
                          "1", "--heal-text", str(tmp_path / "missing.jsonl")], "file not found")):
        out = tmp_path / "x"
        res = CliRunner().invoke(main, ["prune", "--model", str(tiny_llama), "--calib", str(calib), *args,
                                        "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert words in res.output and "Traceback" not in res.output
        assert not out.exists()


def test_global_text_adds_training_windows_and_its_own_held_out_ones(tokenizer_dir, calib, tmp_path):
    """With heal.global_text, the fitting windows stay those of the calibration stream, the extra ones come
    from the other text, and the held-out set holds both texts' windows (so a keep-decision sees both)."""
    from transformers import AutoTokenizer

    from edgeprune.config.recipe import Calibration, Heal
    from edgeprune.stages.heal_step import split_windows
    from conftest import c4_lines

    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(c4_lines(40)[20:]) + "\n", encoding="utf-8")  # rows the calib file lacks
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    base = Heal(method="down-cut", calibration=Calibration(path=calib, samples=4, seq_len=64, seed=1),
                holdout_samples=2, global_minutes=1, global_samples=5)
    fit0, hold0, extra0 = split_windows(tok, base)
    fit1, hold1, extra1 = split_windows(tok, base.model_copy(update={"global_text": other}))
    assert fit1.equal(fit0) and hold1[:2].equal(hold0)
    assert hold1.shape == (4, 64) and extra1.shape == (5, 64)
    assert not any(extra1[i].equal(extra0[i]) for i in range(5))  # another text, not the stream's later windows
    rows = {tuple(r.tolist()) for r in extra1}
    assert not any(tuple(r.tolist()) in rows for r in hold1[2:])  # its held-out windows are never trained on


def test_prune_heal_global_on_another_text_records_it(tiny_llama, calib, tmp_path):
    from conftest import c4_lines

    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(c4_lines(40)[20:]) + "\n", encoding="utf-8")
    out = tmp_path / "healed"
    res = CliRunner().invoke(main, ["prune", "--model", str(tiny_llama), "--method", "block-influence", "--remove", "1",
                                    "--calib", str(calib), "--heal", "down-cut", "--heal-minutes", "0", "0.02",
                                    "--heal-text", str(other), "--heal-windows", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    heal = json.loads((out / "edgeprune-pruned.json").read_text())["heal"]
    glob = heal["global"]
    assert glob["text"] == str(other) and glob["steps"] >= 1 and glob["teacher_topk_s"] >= 0
    # the fitting windows (32 by default, fewer if the calib file is short) plus the 3 of the other text
    assert glob["windows"] == heal["fit_tokens"] // 512 + 3
    # the other text's 8 held-out windows, and the calibration stream's (one here: the file is short)
    assert heal["holdout_tokens"] == 8 * 512 + 512


RECIPE = """\
version: 1
name: tiny-heal
calibration: {{path: {calib}, samples: 4, seq_len: 64}}
quality: {{ctx: 64, windows: 2}}
bench: {{repetitions: 1, warmup: 0}}
search: {{quants: [Q4_K_M]}}
heal: {{method: down-cut, calibration: {{path: {calib}, samples: 8, seq_len: 64}}, holdout_samples: 2}}
"""


@pytest.mark.slow  # a whole planner run on the tiny model with an imatrix per export: 2-3 min
def test_planner_heals_every_pruned_candidate(tmp_path, tokenizer_dir, calib):
    from conftest import build_tiny

    from test_planner_stages import _budget_for_one_layer

    tiny = build_tiny(tmp_path / "tiny", tokenizer_dir, hidden_size=256, intermediate_size=2048, head_dim=64,
                      tie_word_embeddings=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(calib=calib))
    res = CliRunner().invoke(main, ["plan", "--model", str(tiny), "--runner", "fake", "--recipe", str(recipe),
                                    "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run"),
                                    "--max-ppl-ratio", "5", "--latency", "600",
                                    "--max-file-gb", f"{_budget_for_one_layer(tiny):.6f}"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    base, cand = m["iterations"][0], m["iterations"][-1]
    assert "heal" not in base and cand["k"] == 1
    heal = cand["heal"]
    assert heal["removed"] == cand["removed_layers"]
    losses = heal["holdout_nll"]
    # the refit is kept only when it beats the unhealed model on the held-out windows (on this random
    # tiny model with 2,048 FFN channels and 512 fitting tokens it may not)
    assert heal["chosen"] == ("down-cut" if losses["down-cut"] < losses["none"] else "none")
    steps = [s["step"] for s in m["steps"]]
    assert steps.index("prune") < steps.index("heal") < steps.index("export", steps.index("heal"))
    export_key = json.loads((Path(cand["gguf"]).parent / "step.json").read_text())["key"]
    assert export_key["model"].startswith("heal-")  # the GGUF was made from the healed weights
    # the run's speed samples went to the file of this (target, model shape), not the target's only
    files = [p.name for p in (tmp_path / "calibration").glob("*.json")]
    assert files == ["host.fake.L4-h256-q4-kv2-d64-f2048-v49152-tied.json"], files


def test_planner_never_ships_a_pruned_model_a_quant_type_alone_beats(tmp_path, tokenizer_dir, calib):
    """The search may pick -1 layer; the full-depth Q4_0 is then measured as a challenger (logged),
    and the delivered model is never a pruned one that a met full-depth candidate beats on
    perplexity. Mutant caught: challenge_with_quant_only returning at once (no challenger logged)."""
    from conftest import build_tiny

    from test_planner_stages import _budget_for_one_layer

    tiny = build_tiny(tmp_path / "tiny", tokenizer_dir, hidden_size=256, intermediate_size=2048, head_dim=64,
                      tie_word_embeddings=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(calib=calib).replace("[Q4_K_M]", "[Q4_K_M, Q4_0]"))
    res = CliRunner().invoke(main, ["plan", "--model", str(tiny), "--runner", "fake", "--recipe", str(recipe),
                                    "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run"),
                                    "--max-ppl-ratio", "1000", "--latency", "600",
                                    "--max-file-gb", f"{_budget_for_one_layer(tiny):.6f}"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    its = m["iterations"]
    final = its[m["result"]["iteration"]] if "iteration" in m["result"] else None
    met_full = [it for it in its[1:] if it["k"] == 0 and all(c["met"] for c in it["checks"].values())]
    if final is not None and final["k"]:
        assert any("challenger" in e for e in m["search"]), m["search"]
        assert all(it["ppl"]["ppl"] >= final["ppl"]["ppl"] for it in met_full)
