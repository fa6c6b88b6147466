"""`edgeprune prune --method NAME` for width and sparsity methods, and its answers to bad input."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from edgeprune.cli import main


def _run(args):
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def test_prune_heads_and_wanda_from_the_cli(tiny_llama, small_calib, tmp_path):
    code, out = _run(["prune", "--model", str(tiny_llama), "--method", "heads", "--fraction", "0.5",
                      "--calib", str(small_calib), "--out", str(tmp_path / "h")])
    assert code == 0, out
    info = json.loads(out[out.index("{"):])
    assert info["num_key_value_heads"] == 1 and info["num_attention_heads"] == 2
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "h").config.head_dim == 32
    code, out = _run(["prune", "--model", str(tiny_llama), "--method", "wanda", "--nm", "2:4",
                      "--calib", str(small_calib), "--out", str(tmp_path / "w")])
    assert code == 0, out
    w = AutoModelForCausalLM.from_pretrained(tmp_path / "w").model.layers[1].mlp.down_proj.weight
    assert torch.all((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2)


@pytest.mark.parametrize("args,message", [
    (["--method", "wamda", "--sparsity", "0.5"], "did you mean 'wanda'"),
    (["--method", "angualr", "--remove", "2"], "did you mean 'angular'"),
    (["--method", "wanda", "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
    (["--method", "wanda", "--sparsity", "0.5", "--nm", "2:4"], "exactly one of --sparsity"),
    (["--method", "ffn", "--remove", "2"], "--remove does not apply to width methods"),
    (["--method", "heads"], "width methods need --fraction"),
    (["--method", "angular"], "depth methods need --remove"),
])
def test_prune_rejects_bad_method_options(tiny_llama, tmp_path, args, message):
    code, out = _run(["prune", "--model", str(tiny_llama), "--out", str(tmp_path / "o"), *args])
    assert code == 2 and message in out, out
    assert not (tmp_path / "o").exists()
