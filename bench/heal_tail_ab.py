"""The global step's arms at equal steps, on one machine: by default the teacher's top-K
renormalised against its tail kept as a class (`heal.topk_tail`), with the same student, windows,
teacher top-K, steps and learning rate; `--arm` sets other arms (loss and learning rate).

    python bench/heal_tail_ab.py --steps 60 --windows 16 --out bench/out/heal/tail-ab.json
    python bench/tables.py heal-tail-ab
    python bench/heal_tail_ab.py --steps 60 --windows 16 --arm "lr 3e-4=tail@3e-4" --arm "lr 1e-3=tail@1e-3" \
        --out bench/out/heal/lr-ab.json

Student: SmolLM2-135M-Instruct minus angular layers 13-18, not healed (the closed-form fit needs the
heal stage's teacher states; the two losses are compared on the plain cut). Training: the heal
stage's C4 calibration stream, 4 x 512 tokens a step, one pass over `4 x steps` windows, every layer,
lr 3e-4 with warm-up and cosine over the steps, compiled (stages/heal_global.global_distill). The
teacher's top-64 and tail mass are computed once and given to both arms. Scored in fp32 on `--windows`
windows of 1,024 tokens of WikiText-2 test and of LAMBADA text (bench/heal_eval.py's texts); the
unpruned and the unhealed model on the same windows give the share of lost log-perplexity regained.
Steps are counted, not timed, so the machine's drift does not enter the comparison.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

REMOVED = [13, 14, 15, 16, 17, 18]  # angular -6 on SmolLM2 (bench/out/heal/gguf-depth6.json)
ARMS = ("renormalised=renormalised@3e-4", "tail=tail@3e-4")  # NAME=LOSS@LR


def parse_arm(text: str) -> tuple[str, bool, float]:
    """NAME=tail@LR or NAME=renormalised@LR -> (name, tail kept, lr)."""
    name, _, spec = text.partition("=")
    loss, _, lr = spec.partition("@")
    try:
        rate = float(lr)
    except ValueError:
        rate = 0.0
    if not name or loss not in ("tail", "renormalised") or not rate > 0:
        raise SystemExit(f"--arm {text!r}: expected NAME=tail@LR or NAME=renormalised@LR, e.g. \"fast=tail@1e-3\"")
    return name, loss == "tail", rate


def scores(model, tok, windows: int) -> dict:
    from heal_eval import score

    return score(model, tok, windows, 1024)


def run(steps: int, windows: int, arms: list[tuple[str, bool, float]]) -> dict:
    from edgeprune.config.recipe import Calibration
    from edgeprune.recovery.teacher import FixedTopK, teacher_topk
    from edgeprune.stages.calib import calibration_windows
    from edgeprune.stages.heal_global import global_distill
    from edgeprune.stages.heal_local import bf16_ok
    from edgeprune.stages.load import import_model
    from edgeprune.store import StepStore
    from edgeprune.surgery.layers import remove_layers
    from edgeprune.toolchain.hf import load_model, resolve_model

    hf_dir, _ = import_model(StepStore(Path.home() / ".cache" / "edgeprune" / "steps"), resolve_model(None))
    teacher, tok = load_model(hf_dir)
    teacher.float().eval()
    student = remove_layers(copy.deepcopy(teacher), REMOVED)
    train = calibration_windows(tok, Calibration(samples=4 * steps, seq_len=512, seed=1))
    t0 = time.perf_counter()
    topk = teacher_topk(teacher, train, 64, bf16=bf16_ok())
    out = {"topk_s": round(time.perf_counter() - t0, 1), "unpruned": scores(teacher, tok, windows),
           "unhealed": scores(copy.deepcopy(student), tok, windows), "arms": {}}
    for name, tail, lr in arms:
        model = copy.deepcopy(student)
        info = global_distill(model, train, FixedTopK(topk, tail=tail), 0, minutes=600, lr=lr, micro=4,
                              max_steps=steps, compile=True)
        out["arms"][name] = scores(model, tok, windows) | {"train": info}
        print(name, json.dumps(out["arms"][name]), flush=True)
    return out


def table(path: Path) -> str:
    """python bench/tables.py heal-tail-ab"""
    from edgeprune.methods.distill import share_regained

    data = json.loads(Path(path).read_text())
    base, cut = data["unpruned"], data["unhealed"]
    lines = ["| arm | lr | steps (tokens) | WikiText-2 | lost log-ppl regained | LAMBADA text | KD loss, first → last tenth |",
             "|---|---|---|---|---|---|---|",
             f"| unpruned | – | – | {base['ppl_wiki']:.2f} | – | {base['ppl_heldout']:.2f} | – |",
             f"| −6 angular (13–18), unhealed | – | – | {cut['ppl_wiki']:.2f} | 0 % | {cut['ppl_heldout']:.2f} | – |"]
    for name, r in data["arms"].items():
        t = r["train"]
        share = share_regained(base["ppl_wiki"], cut["ppl_wiki"], r["ppl_wiki"])
        lines.append(f"| {name} | {t['lr']:g} | {t['steps']} ({t['tokens']:,}) | {r['ppl_wiki']:.2f} | {100 * share:.0f} % | "
                     f"{r['ppl_heldout']:.2f} | {t['loss_first_10pct']:.3f} → {t['loss_last_10pct']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--windows", type=int, default=16, help="scoring windows of 1,024 tokens per text")
    ap.add_argument("--arm", action="append", help="NAME=tail@LR or NAME=renormalised@LR (repeat; default: "
                    + ", ".join(ARMS) + ")")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path)
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    arms = [parse_arm(a) for a in args.arm or ARMS]
    if len({a[0] for a in arms}) < len(arms):
        raise SystemExit("--arm: two arms share a name; give each its own NAME")
    torch.set_num_threads(2)
    out = {"command": "python " + " ".join(sys.argv), "removed": REMOVED, "steps": args.steps,
           "windows": args.windows, "torch": torch.__version__} | run(args.steps, args.windows,
                                                                    arms)
    from benchout import write_json  # bench/ is on sys.path when a script runs; not when tables.py loads it

    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
