"""The recovery entry point under `accelerate launch --config_file configs/accelerate/fsdp-cpu.yaml`
(FSDP2, 2 CPU processes on gloo, student and live teacher sharded): per-step KD+SFT loss and the
merged weights match a single-process run, each process holds half the student's parameters, memory
per process is in recovery.json, and a killed FSDP run resumes from its checkpoint.

Tolerance: rel 1e-4 on each step's loss, abs 1e-5 on merged weights, as for DDP
(tests/test_recovery_ddp.py), for the same reason: every position of a packed text block carries a
loss, so each process's mean over its half of the global batch averages to the full-batch mean, and
FSDP's reduce-scatter averages gradients as DDP's all-reduce does; what remains is float summation
order (seen on this machine: ~1e-7 relative on losses, ~4e-6 on weights; Adam with lr 1e-2 magnifies
the differences on near-zero gradients of the first LoRA steps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeprune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "accelerate" / "fsdp-cpu.yaml"
RECIPE = """version: 1
recovery:
  lora: {rank: 4, alpha: 8}
  data: {source: %s, max_length: 32, val_blocks: 2, val_fraction: 0.2}
  train: {lr: 0.01, batch_size: 4, warmup_steps: 0, eval_every: 100, checkpoint_every: 2, threads: 1}
"""
STEPS = 4


def _run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stderr[-3000:]


def _fsdp(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
            "-m", "edgeprune", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama):
    """(work dir, recover args without --out, the single-process run's folder)."""
    from conftest import c4_lines

    work = tmp_path_factory.mktemp("fsdp")
    text = work / "text.jsonl"
    text.write_text("\n".join(c4_lines(12)) + "\n")
    recipe = work / "r.yaml"
    recipe.write_text(RECIPE % text)
    args = ["recover", "--model", str(tiny_llama), "--teacher", str(tiny_llama), "--mode", "kd+sft",
            "--recipe", str(recipe), "--steps", str(STEPS)]
    _ok(_run([sys.executable, "-m", "edgeprune", *args, "--out", str(work / "one")], work))
    return work, args, work / "one"


def _same_run(one: Path, two: Path) -> None:
    from safetensors.torch import load_file

    a, b = (json.loads((d / "recovery.json").read_text()) for d in (one, two))
    assert len(a["losses"]) == len(b["losses"]) == STEPS
    for x, y in zip(a["losses"], b["losses"]):
        assert y == pytest.approx(x, rel=1e-4)
    assert a["losses"][-1] != pytest.approx(a["losses"][0], rel=1e-3)  # training moved the loss
    wa, wb = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


@pytest.mark.slow
def test_two_process_fsdp_matches_single_process_and_shards_the_base(runs, tiny_llama):
    from safetensors.torch import load_file

    work, args, one = runs
    _ok(_run(_fsdp([*args, "--out", str(work / "two")]), work))
    _same_run(one, work / "two")
    a, b = (json.loads((d / "recovery.json").read_text()) for d in (one, work / "two"))
    assert (a["processes"], a["parallel"], b["processes"], b["parallel"]) == (1, "single", 2, "fsdp")
    # Each process holds half of the student (LoRA included): what sharding is for.
    assert len(b["param_mb_per_process"]) == 2
    for mb in b["param_mb_per_process"]:
        assert mb == pytest.approx(a["param_mb_per_process"][0] / 2, rel=0.02)
    for run, n in ((a, 1), (b, 2)):
        assert len(run["rss_peak_mb_per_process"]) == n and all(mb > 0 for mb in run["rss_peak_mb_per_process"])
    # A plain HF checkpoint: the input's tensor names, no adapter left in it; the adapter beside it.
    assert set(load_file(work / "two" / "model.safetensors")) == set(load_file(tiny_llama / "model.safetensors"))
    assert (work / "two" / "adapter" / "adapter_config.json").is_file()
    assert not (work / "two" / "checkpoint").exists()


@pytest.mark.slow
def test_killed_fsdp_run_resumes_from_its_checkpoint(runs):
    work, args, one = runs
    out = work / "killed"
    killed = _run(_fsdp([*args, "--out", str(out)]), work, EDGEPRUNE_TEST_KILL_AT="recover-step-3")
    assert killed.returncode != 0
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["loop"]["step"] == 2  # checkpoint_every 2: the step-3 update was lost
    # Whole tensors, gathered from the shards: the file a single process writes.
    shapes = {k: v.shape[0] for k, v in state["adapter"].items() if "q_proj.lora_B" in k}
    assert shapes and all(rows == 128 for rows in shapes.values())
    _ok(_run(_fsdp([*args, "--out", str(out)]), work))
    assert json.loads((out / "recovery.json").read_text())["resumed"]
    _same_run(one, out)


def test_fsdp_launch_other_than_fsdp2_lean_is_a_one_line_error(monkeypatch):
    from edgeprune.recovery.fsdp import check_launch

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="--fsdp_version 2"):
        check_launch("lean")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ConfigError, match="lean trainer only"):
        check_launch("trl")
    check_launch("lean")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    check_launch("trl")  # no FSDP asked for: nothing to refuse
