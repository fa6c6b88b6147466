"""Opt-in real-model tier for the pruning methods (`pytest -m slow`, several minutes each):
structural methods on SmolLM2-135M reload, export to a verified GGUF and run."""

import json

import pytest
from click.testing import CliRunner

from edgeprune.cli import main

pytestmark = pytest.mark.slow


def _prune(tmp_path, name, *args):
    out = tmp_path / name
    res = CliRunner().invoke(main, ["prune", "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.output[res.output.index("{"):])


@pytest.mark.parametrize("args,shape", [
    (["--method", "heads", "--fraction", "0.34"], (6, 2, 1536)),
    (["--method", "taylor", "--fraction", "0.2"], (6, 3, 1248)),
])
def test_width_on_smollm2_exports_and_runs(tmp_path, args, shape):
    out, info = _prune(tmp_path, "w", *args)
    assert (info["num_attention_heads"], info["num_key_value_heads"], info["intermediate_size"]) == shape
    # Q8_0: the point is the structure; the Q4_K_M drift gate can reject a badly damaged, unrecovered model
    res = CliRunner().invoke(main, ["export", "--model", str(out), "--quant", "Q8_0", "--out", str(tmp_path / "w.gguf")])
    assert res.exit_code == 0, res.output
    verify = json.loads(res.output[res.output.index("{"):])["verify"]
    assert verify["hf_vs_f16"]["cos_min"] > 0.995
    assert verify["gguf"]["llama.attention.head_count"] == shape[0]


def test_angular_on_smollm2_removes_a_contiguous_block(tmp_path):
    _, info = _prune(tmp_path, "a", "--method", "angular", "--remove", "4")
    first = info["removed"][0]
    assert info["removed"] == list(range(first, first + 4)) and info["layers"] == 26
