"""Opt-in real-model tier: `pytest -m slow`. Runs the main job on SmolLM2-135M (several minutes)."""

import json

import pytest
from click.testing import CliRunner

from edgeprune.cli import main

pytestmark = pytest.mark.slow


def test_plan_host_on_smollm2_meets_a_budget_the_baseline_misses(tmp_path):
    loose = CliRunner().invoke(main, ["plan", "--target", "host", "--latency", "100", "--out", str(tmp_path / "a")])
    assert loose.exit_code == 0, loose.output
    base = json.loads((tmp_path / "a" / "manifest.json").read_text())["iterations"][0]
    assert base["layers"] == 30 and base["verify"]["hf_vs_f16"]["top1_agree"] > 0.9
    budget = base["latency_s"] * 0.85
    res = CliRunner().invoke(main, ["plan", "--target", "host", "--latency", f"{budget:.3f}", "--max-ppl-ratio", "3",
                                    "--out", str(tmp_path / "b")])
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert res.exit_code == 0, res.output
    final = next(it for it in m["iterations"] if it["k"] == m["result"]["chosen_k"])
    assert final["k"] > 0 and final["latency_s"] <= budget
    assert len(m["iterations"]) <= 1 + 4
    assert (tmp_path / "b" / m["result"]["artifact"]).stat().st_size < base["gguf_bytes"]
