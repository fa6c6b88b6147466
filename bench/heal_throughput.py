"""CPU training throughput at the same batch: the lean LoRA loop (edgeprune recover) against the
global distillation of the heal stage (stages/heal_global.py), on the same pruned student.

    python bench/heal_throughput.py --steps 6 --rounds 2 --out bench/out/heal/throughput.json
    python bench/tables.py heal-throughput

Student: SmolLM2-135M-Instruct minus angular layers 13-18. Batch: 4 blocks x 256 tokens for every
row (the lean loop's defaults). The rows run one after another, `rounds` times in alternation, so
a drift of the shared machine shows as disagreement between rounds; the ratio is taken per round.
Tokens/s counts training steps only (the lean loop's validation passes and the top-K teacher pass
are timed apart); the global rows leave out their first step, where torch.compile compiles (given
as first_step_s). The speedups take the faster global row, eager or compiled.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeprune.config.recipe import Calibration
from edgeprune.config.recovery import Recovery
from edgeprune.store import StepStore
from edgeprune.stages.calib import calibration_windows
from edgeprune.recovery.teacher import FixedTopK, teacher_topk
from edgeprune.stages.heal_global import global_distill
from edgeprune.stages.heal_local import bf16_ok
from edgeprune.stages.load import import_model
from edgeprune.stages.recover import run_recovery
from edgeprune.surgery.layers import remove_layers
from edgeprune.toolchain.hf import load_model, resolve_model, save_model

REMOVED = [13, 14, 15, 16, 17, 18]  # angular -6 on SmolLM2 (bench/out/heal/gguf-depth6.json)
BATCH, SEQ = 4, 256


def lean(student_dir: Path, teacher_dir: Path, mode: str, steps: int, work: Path) -> dict:
    cfg = Recovery.model_validate({"mode": mode, "data": {"source": "c4", "max_length": SEQ, "val_blocks": 4},
                                   "train": {"batch_size": BATCH, "steps": steps, "eval_every": 1000,
                                             "checkpoint_every": 1000, "warmup_steps": 1}})
    s = run_recovery(student_dir, cfg, work / f"lean-{mode}", teacher_path=teacher_dir if mode != "sft" else None,
                     fresh=True)
    return {"steps": s["steps"], "tokens": s["tokens"], "tokens_per_s": round(s["train_tokens_per_s"], 1)}


def fast(student, windows, topk, steps: int, first: int, compile: bool) -> dict:
    model = copy.deepcopy(student)
    info = global_distill(model, windows, FixedTopK(topk), first, minutes=60, micro=BATCH, max_steps=steps,
                          compile=compile)
    return {k: info[k] for k in ("steps", "tokens", "tokens_per_s", "bf16", "compiled", "first_step_s")}


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = ["| round | lean LoRA SFT tok/s | lean LoRA KD (live teacher) tok/s | global top-K KD tok/s, eager | "
             "compiled (first step s) | × lean KD | × lean SFT |", "|---|---|---|---|---|---|---|"]
    for n, r in enumerate(data["rounds"], 1):
        c = r.get("global-kd-compiled")
        fused = f"{c['tokens_per_s']:.0f} ({c['first_step_s']:.0f})" if c else "–"
        lines.append(f"| {n} | {r['lean-sft']['tokens_per_s']:.0f} | {r['lean-kd']['tokens_per_s']:.0f} | "
                     f"{r['global-kd']['tokens_per_s']:.0f} | {fused} | {r['speedup_vs_lean_kd']:.2f} | "
                     f"{r['speedup_vs_lean_sft']:.2f} |")
    lines.append(f"| median | | | | | {data['median_speedup_vs_lean_kd']:.2f} | {data['median_speedup_vs_lean_sft']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path)
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    torch.set_num_threads(2)
    hf_dir, _ = import_model(StepStore(Path.home() / ".cache" / "edgeprune" / "steps"), resolve_model(None))
    teacher, tok = load_model(hf_dir)
    teacher.float().eval()
    student = remove_layers(copy.deepcopy(teacher), REMOVED)
    windows = calibration_windows(tok, Calibration(samples=BATCH * args.steps, seq_len=SEQ, seed=1))
    t0 = time.perf_counter()
    topk = teacher_topk(teacher, windows, 64, bf16=bf16_ok())
    topk_s = time.perf_counter() - t0
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_model(student, tok, work / "student")
        for r in range(args.rounds):
            row = {"lean-sft": lean(work / "student", hf_dir, "sft", args.steps, work),
                   "lean-kd": lean(work / "student", hf_dir, "kd", args.steps, work)}
            for name, compiled in (("global-kd", False), ("global-kd-compiled", True)):
                row[name] = fast(student, windows, topk, args.steps, REMOVED[0] - 1, compiled)
            best = max(row["global-kd"]["tokens_per_s"], row["global-kd-compiled"]["tokens_per_s"])
            row["speedup_vs_lean_kd"] = round(best / row["lean-kd"]["tokens_per_s"], 2)
            row["speedup_vs_lean_sft"] = round(best / row["lean-sft"]["tokens_per_s"], 2)
            print(json.dumps(row), flush=True)
            rounds.append(row)
    out = {"command": "python " + " ".join(sys.argv), "batch": BATCH, "seq_len": SEQ, "removed": REMOVED,
           "topk": 64, "topk_teacher_s": round(topk_s, 1), "topk_tokens": int(windows.numel()),
           "threads": 2, "torch": torch.__version__, "rounds": rounds,
           "median_speedup_vs_lean_kd": statistics.median(r["speedup_vs_lean_kd"] for r in rounds),
           "median_speedup_vs_lean_sft": statistics.median(r["speedup_vs_lean_sft"] for r in rounds)}
    from benchout import write_json  # bench/ is on sys.path when a script runs; not when tables.py loads it

    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
