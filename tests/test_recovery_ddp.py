"""The recovery entry point, unchanged, under `accelerate launch` with 2 CPU processes (gloo
DDP): per-step training loss and the merged weights match a single-process run.

Tolerance: rel 1e-4 on each step's loss, abs 1e-5 on merged weights. Every position of a packed
text block carries a loss, so each process's mean over its half of the global batch averages
to the full-batch mean and DDP's averaged gradient equals the single-process gradient; what
remains is float summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

RECIPE = """version: 1
recovery:
  lora: {rank: 4, alpha: 8}
  data: {source: %s, max_length: 32, val_blocks: 2, val_fraction: 0.2}
  train: {lr: 0.01, batch_size: 4, warmup_steps: 0, eval_every: 100, threads: 1}
"""


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, tiny_llama):
    from safetensors.torch import load_file

    from conftest import c4_lines

    text = tmp_path / "text.jsonl"
    text.write_text("\n".join(c4_lines(12)) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE % text)
    args = ["recover", "--model", str(tiny_llama), "--recipe", str(recipe), "--steps", "4"]
    _run([sys.executable, "-m", "edgeprune", *args, "--out", str(tmp_path / "one")], tmp_path)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "-m", "edgeprune", *args, "--out", str(tmp_path / "two")], tmp_path)
    one = json.loads((tmp_path / "one" / "recovery.json").read_text())
    two = json.loads((tmp_path / "two" / "recovery.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2 and two["parallel"] == "ddp"
    assert len(two["rss_peak_mb_per_process"]) == 2  # memory of every process, gathered
    assert len(one["losses"]) == len(two["losses"]) == 4
    for a, b in zip(one["losses"], two["losses"]):
        assert b == pytest.approx(a, rel=1e-4)
    assert one["losses"][-1] != pytest.approx(one["losses"][0], rel=1e-3)  # training moved the loss
    wa, wb = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
