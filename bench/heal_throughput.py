"""CPU training throughput at the same batch: the lean LoRA loop (edgeprune recover) against the
global distillation of the heal stage (stages/heal_global.py), on the same pruned student.

    python bench/heal_throughput.py --steps 6 --rounds 2 --out bench/out/heal/throughput.json
    python bench/tables.py heal-throughput

Student: SmolLM2-135M-Instruct minus angular layers 13-18. Batch: 4 blocks x 256 tokens for every
row (the lean loop's defaults). The rows run one after another, `rounds` times in alternation, so
a drift of the shared machine shows as disagreement between rounds; the ratio is taken per round.
The global step is timed in its `cut` mode (layers from the first cut up) eager and compiled, and
compiled in its `all` mode (every layer trains: the heal stage's default).

Each round also times the matmuls alone that one `cut` step must do (`gemm_bound`: the trained
layers' linear forward, input-gradient and weight-gradient products and the head's two per chunk, in
bf16, at the step's shapes; attention's QK^T and PV products are left out, so the bound is loose by
their share): their sum bounds what this step reaches on this CPU at these shapes with this BLAS.
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
CHUNK = 512  # the head's chunk in the timed steps and in their matmul bound (global_distill's default)
FIRST = REMOVED[0] - 1  # the `cut` mode's first trained layer: the one before the cut


def lean(student_dir: Path, teacher_dir: Path, mode: str, steps: int, work: Path) -> dict:
    cfg = Recovery.model_validate({"mode": mode, "data": {"source": "c4", "max_length": SEQ, "val_blocks": 4},
                                   "train": {"batch_size": BATCH, "steps": steps, "eval_every": 1000,
                                             "checkpoint_every": 1000, "warmup_steps": 1}})
    s = run_recovery(student_dir, cfg, work / f"lean-{mode}", teacher_path=teacher_dir if mode != "sft" else None,
                     fresh=True)
    return {"steps": s["steps"], "tokens": s["tokens"], "tokens_per_s": round(s["train_tokens_per_s"], 1)}


def step_gemms(cfg, tokens: int, layers: int, chunk: int) -> list[tuple[str, int, int, int, int]]:
    """(what, m, k, n, count) of each matrix product in one global step of `tokens` rows through
    `layers` trained decoder layers and the frozen head in chunks of `chunk` rows: every linear's
    forward x W^T, its input gradient g W and its weight gradient g^T x; the head's logits h E^T and
    their gradient into h, g E (the head is frozen: no weight gradient)."""
    h, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, f), (h, f), (f, h)]  # (in, out): q k v o gate up down
    out = []
    for i, o in linears:
        out += [("forward", tokens, i, o, layers), ("input grad", tokens, o, i, layers),
                ("weight grad", o, tokens, i, layers)]
    full, last = divmod(tokens, chunk)
    for rows, n in ((chunk, full), (last, 1 if last else 0)):
        out += [("head logits", rows, h, v, n), ("head grad", rows, v, h, n)] if n else []
    return out


def gemm_bound(cfg, tokens: int, layers: int, chunk: int, reps: int = 5) -> dict:
    """Seconds per step of the step's matrix products alone (bf16, each timed as the median of `reps`
    after a warm-up), and the tokens/s that caps."""
    parts: dict[str, float] = {}
    flop = 0
    for what, m, k, n, count in step_gemms(cfg, tokens, layers, chunk):
        a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
        a @ b
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        parts[what] = parts.get(what, 0.0) + statistics.median(times) * count
        flop += 2 * m * k * n * count
    total = sum(parts.values())
    return {"seconds": round(total, 3), "tokens_per_s": round(tokens / total, 1), "gflop": round(flop / 1e9, 1),
            "gflop_per_s": round(flop / total / 1e9, 1), "parts_s": {k: round(v, 3) for k, v in parts.items()}}


def fast(student, windows, topk, steps: int, first: int, compile: bool) -> dict:
    model = copy.deepcopy(student)
    info = global_distill(model, windows, FixedTopK(topk), first, minutes=60, micro=BATCH, chunk=CHUNK,
                          max_steps=steps, compile=compile)
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
    if all("gemm-bound" in r for r in data["rounds"]):
        lines += ["", bound_table(data)]
    return "\n".join(lines)


def bound_table(data: dict) -> str:
    """Per round: the compiled `cut` and `all` steps against the bound of the `cut` step's matmuls."""
    lines = ["| round | lean LoRA KD tok/s | compiled, `cut` tok/s | compiled, `all` tok/s | matmuls alone of a `cut` "
             "step: s per step (GFLOP/s) | their bound, tok/s | bound × lean KD |", "|---|---|---|---|---|---|---|"]
    for n, r in enumerate(data["rounds"], 1):
        g = r["gemm-bound"]
        lines.append(f"| {n} | {r['lean-kd']['tokens_per_s']:.0f} | {r['global-kd-compiled']['tokens_per_s']:.0f} | "
                     f"{r['global-kd-all-compiled']['tokens_per_s']:.0f} | {g['seconds']:.2f} ({g['gflop_per_s']:.0f}) | "
                     f"{g['tokens_per_s']:.0f} | {r['gemm_bound_vs_lean_kd']:.2f} |")
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
                row[name] = fast(student, windows, topk, args.steps, FIRST, compiled)
            row["global-kd-all-compiled"] = fast(student, windows, topk, args.steps, 0, True)
            row["gemm-bound"] = gemm_bound(student.config, BATCH * SEQ, len(student.model.layers) - FIRST, CHUNK)
            best = max(row["global-kd"]["tokens_per_s"], row["global-kd-compiled"]["tokens_per_s"])
            row["speedup_vs_lean_kd"] = round(best / row["lean-kd"]["tokens_per_s"], 2)
            row["gemm_bound_vs_lean_kd"] = round(row["gemm-bound"]["tokens_per_s"] / row["lean-kd"]["tokens_per_s"], 2)
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
