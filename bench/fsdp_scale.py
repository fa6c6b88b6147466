"""LoRA recovery of one model as one process and under FSDP over N processes: the same recipe, the
same batches, so the per-step losses should agree; memory per process side by side.

    python bench/fsdp_scale.py --model DIR [--steps 4] [--processes 2] [--seq-len 128] [--batch 2]
        [--mode sft|kd|kd+sft] [--teacher DIR] [--base-dtype float32|bfloat16] [--out FILE.json]

DIR is any HF Llama folder, e.g. the random-weight `edgeprune synth --shape llama-3.2-1b --out DIR`.
Both runs are `edgeprune recover` commands: `python -m edgeprune recover ...` and `accelerate launch
--config_file configs/accelerate/fsdp-cpu.yaml --num_processes N -m edgeprune recover ...`, one
thread per process (OMP_NUM_THREADS=1, train.threads 1). Data: the C4 sample shipped with the
package, packed into --seq-len blocks; validation on 2 blocks, before and after training only. KD
modes distil from --teacher, or from the model itself when none is given (a shape test, not a
recovery). Written: each run's per-step losses, wall time of the command (loading, training,
merging and writing the merged checkpoint), peak RSS, training-only peak RSS and parameter MB per
process (recovery.json), and the largest relative difference of a step's loss between the two runs.
The runs' output folders go to a temporary folder unless --work is given.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp-cpu.yaml"
MEMORY_KEYS = ("rss_peak_mb_per_process", "rss_train_peak_mb_per_process", "param_mb_per_process")


def recipe(data: Path, seq_len: int, batch: int, base_dtype: str) -> dict:
    # warmup 0 and a high LoRA lr: a few steps still move the loss, so agreement is not trivial.
    return {"version": 1, "recovery": {
        "lora": {"rank": 16, "alpha": 32},
        "data": {"source": str(data), "max_length": seq_len, "val_blocks": 2, "val_fraction": 0.05},
        "train": {"lr": 1e-3, "batch_size": batch, "warmup_steps": 0, "eval_every": 10_000,
                  "checkpoint_every": 10_000, "threads": 1, "base_dtype": base_dtype}}}


def write_inputs(work: Path, args) -> Path:
    """The text file and the recipe the two runs share; returns the recipe's path."""
    from edgeprune.data.texts import CALIBRATION_FILE

    text = work / "c4.jsonl"
    text.write_bytes(gzip.decompress(CALIBRATION_FILE.read_bytes()))
    path = work / "recipe.yaml"
    path.write_text(json.dumps(recipe(text, args.seq_len, args.batch, args.base_dtype)))  # JSON is YAML
    return path


def recover_args(args, recipe_path: Path, out: Path) -> list[str]:
    cmd = ["recover", "--model", str(args.model), "--recipe", str(recipe_path), "--steps", str(args.steps),
           "--mode", args.mode, "--fresh", "--out", str(out)]
    if args.mode != "sft":
        cmd += ["--teacher", str(args.teacher or args.model)]
    return cmd


def run(cmd: list[str], out: Path) -> dict:
    """One recover command; its recovery.json numbers and the command's wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    rec = json.loads((out / "recovery.json").read_text())
    return {"processes": rec["processes"], "parallel": rec["parallel"], "losses": rec["losses"],
            "initial_val_ppl": rec["initial_val_ppl"], "best_val_ppl": rec["best_val_ppl"],
            "wall_s": round(wall, 1), **{k: rec.get(k) for k in MEMORY_KEYS}}


def max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b, strict=True))


def shape(model: Path) -> dict:
    cfg = json.loads((model / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "torch_dtype", "dtype")
    return {k: cfg[k] for k in keys if k in cfg}


def measure(args, work: Path) -> dict:
    recipe_path = write_inputs(work, args)
    single = run([sys.executable, "-m", "edgeprune", *recover_args(args, recipe_path, work / "single")],
                 work / "single")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
              "--num_processes", str(args.processes)]
    fsdp = run([*launch, "-m", "edgeprune", *recover_args(args, recipe_path, work / "fsdp")], work / "fsdp")
    return {"model": str(args.model), "shape": shape(args.model), "mode": args.mode, "steps": args.steps,
            "seq_len": args.seq_len, "global_batch": args.batch, "base_dtype": args.base_dtype,
            "single": single, "fsdp": fsdp, "max_rel_loss_diff": max_rel_diff(single["losses"], fsdp["losses"])}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="HF Llama folder (the student)")
    p.add_argument("--teacher", type=Path, default=None, help="KD modes; default: --model itself")
    p.add_argument("--mode", choices=["sft", "kd", "kd+sft"], default="sft")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=2, help="global batch, split over the FSDP processes")
    p.add_argument("--base-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--work", type=Path, default=None, help="keep the runs' output folders here")
    p.add_argument("--out", type=Path, default=None, help="result JSON")
    args = p.parse_args(argv)
    if not (args.model / "config.json").is_file():
        p.error(f"--model {args.model}: not a HF folder (no config.json)")
    if args.processes < 2 or args.batch % args.processes:
        p.error(f"--batch {args.batch} must split over --processes {args.processes} (>= 2)")
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        data = measure(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="fsdp-scale-") as tmp:
            data = measure(args, Path(tmp))
    from benchout import write_json  # bench/ is on sys.path when a script runs

    data["command"] = "python bench/fsdp_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])

    write_json(args.out, data)
    print(json.dumps(data, indent=1))
    return data


def table(path: Path) -> str:
    """python bench/tables.py scale-fsdp"""
    d = json.loads(Path(path).read_text())
    mb = lambda xs: " / ".join(f"{x / 1e3:.2f}" for x in xs)  # noqa: E731
    lines = ["| run | processes | step losses | peak RSS per process GB | training peak RSS GB "
             "| parameters per process GB | wall s |", "|" + "---|" * 7]
    for name in ("single", "fsdp"):
        r = d[name]
        lines.append(f"| {name} | {r['processes']} | {', '.join(f'{x:.5f}' for x in r['losses'])} "
                     f"| {mb(r['rss_peak_mb_per_process'])} | {mb(r['rss_train_peak_mb_per_process'])} "
                     f"| {mb(r['param_mb_per_process'])} | {r['wall_s']:.0f} |")
    lines.append(f"\nLargest relative difference of a step's loss: {d['max_rel_loss_diff']:.1e} "
                 f"({d['mode']}, {d['steps']} steps, sequence length {d['seq_len']}, global batch {d['global_batch']}, "
                 f"base {d['base_dtype']}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
