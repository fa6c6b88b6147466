"""`edgeprune plan` end to end on the tiny model with the fake runner (deterministic speeds)."""

import json

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.toolchain.llamacpp import gguf_metadata


def run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def plan_args(tiny_llama, small_calib, out, *extra):
    # --quants Q4_K_M pins the depth path; the joint quant search is tested in test_planner_loop.py
    return ["plan", "--model", str(tiny_llama), "--runner", "fake", "--calib", str(small_calib),
            "--out", str(out), "--max-ppl-ratio", "5", "--quants", "Q4_K_M", *extra]


def test_dry_run_prints_plan_and_writes_nothing(tiny_llama, small_calib, tmp_path):
    res = run(plan_args(tiny_llama, small_calib, tmp_path / "out", "--dry-run"))
    assert res.exit_code == 0, res.output
    assert "layers:  4 (at most 2 may be removed" in res.output
    assert "score: block-influence" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a whole planner run on the tiny model with an imatrix per export: 2-3 min
def test_plan_iterates_until_budget_met_then_resumes_from_cache(tiny_llama, small_calib, tmp_path):
    loose = run(plan_args(tiny_llama, small_calib, tmp_path / "loose", "--latency", "100"))
    assert loose.exit_code == 0, loose.output
    m0 = json.loads((tmp_path / "loose" / "manifest.json").read_text())
    assert m0["result"]["met"] and m0["result"]["chosen_k"] == 0 and len(m0["iterations"]) == 1
    base_latency = m0["iterations"][0]["latency_s"]

    # a budget just under the unpruned latency: the unpruned model misses, one layer less meets it
    out = tmp_path / "tight"
    res = run(plan_args(tiny_llama, small_calib, out, "--latency", f"{base_latency * 0.999:.6f}"))
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    ks = [it["k"] for it in m["iterations"]]
    assert ks == [0, 1]
    assert not m["iterations"][0]["checks"]["latency_s"]["met"]
    assert m["iterations"][1]["checks"]["latency_s"]["met"]
    assert m["result"]["met"] and m["result"]["chosen_k"] == 1
    art = out / m["result"]["artifact"]
    assert art.is_file() and gguf_metadata(art)["llama.block_count"] == 3
    removed = m["iterations"][1]["removed_layers"]
    scores = m["depth_scores"]["per_layer"]
    assert removed == [min(range(4), key=lambda i: scores[i])]  # the lowest Block Influence
    assert m["iterations"][1]["verify"]["hf_vs_f16"]["cos_min"] > 0.999
    assert "budget met" in (out / "report.md").read_text()
    records = json.loads((out / "bench.json").read_text())["records"]
    assert {r["n_layer"] for r in records} == {4, 3} and all("avg_ts" in r for r in records)
    assert m["versions"]["torch"] and m["versions"]["llama-cpp-python"]

    # rerun: every step is a cache hit, same artifact bytes
    again = run(plan_args(tiny_llama, small_calib, tmp_path / "again", "--latency", f"{base_latency * 0.999:.6f}"))
    assert again.exit_code == 0
    m2 = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert all(s["cache_hit"] for s in m2["steps"])
    assert (tmp_path / "again" / m2["result"]["artifact"]).read_bytes() == art.read_bytes()


@pytest.mark.slow  # a whole planner search on the tiny model, an imatrix per export: 1.5 min
def test_unmeetable_budget_exits_1_without_gguf(tiny_llama, small_calib, tmp_path):
    out = tmp_path / "impossible"
    res = run(plan_args(tiny_llama, small_calib, out, "--latency", "0.001"))
    assert res.exit_code == 1
    assert "budget NOT met" in res.output
    m = json.loads((out / "manifest.json").read_text())
    assert not m["result"]["met"] and "layers removed" in m["result"]["reason"]
    assert not list(out.glob("*.gguf"))


def test_unknown_target_and_method_are_one_line_errors(tiny_llama):
    res = CliRunner().invoke(main, ["plan", "--target", "arm16", "--model", str(tiny_llama), "--dry-run"])
    assert res.exit_code == 2
    assert "did you mean 'arm16g'" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["plan", "--method", "block-influense", "--model", str(tiny_llama), "--dry-run"])
    assert res.exit_code == 2 and "did you mean 'block-influence'" in res.output


def test_methods_and_targets_list():
    res = run(["methods", "--json"])
    assert "block-influence" in json.loads(res.output)["depth"]
    res = run(["targets", "--json"])
    t = json.loads(res.output)
    assert t["arm16g"]["budget"]["latency_s"] == 2.0 and t["arm16g"]["device"]["ram_gb"] == 16
