"""Issue #15's perplexity protocol on healed HF checkpoints, fp32 torch on this CPU: WikiText-2 test
and LAMBADA passages (held out: neither Wikipedia nor C4), 40 non-overlapping 1,024-token windows
each, every token after a window's first scored (the protocol of bench/heal_sweep.py's rows).

    python bench/heal_eval.py --model a6-span=/tmp/hs/a6-span --model a6-span-g8=/tmp/hs/a6-span-g8 \
        --out bench/out/heal/recovery-cpu.json
    python bench/tables.py heal-recovery-cpu

Each model's `edgeprune-pruned.json` heal record (method, held-out calibration NLL, the global
step's tokens and tokens/s, seconds) is copied into the JSON beside its perplexities. The
unpruned and unhealed rows come from bench/out/heal/sweep-gpu.json (same windows, fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

SWEEP = Path(__file__).resolve().parent / "out" / "heal" / "sweep-gpu.json"


def evaluate(path: Path, windows: int, ctx: int) -> dict:
    from edgeprune.toolchain.hf import load_model

    model, tok = load_model(path)
    return score(model, tok, windows, ctx) | heal_record(path)


def score(model, tok, windows: int, ctx: int) -> dict:
    """fp32 perplexity of `model` on `windows` windows of `ctx` tokens of each text, and the seconds."""
    from device_pack import token_windows
    from heal_sweep import window_ppl

    from edgeprune.data import eval_text
    from edgeprune.data.texts import heldout_text

    model.float().eval()
    out = {}
    with torch.no_grad():
        for name, text in (("wiki", eval_text()), ("heldout", heldout_text())):
            t0 = time.perf_counter()
            out[f"ppl_{name}"] = round(window_ppl(model, token_windows(tok, text, ctx, windows)), 3)
            out[f"eval_{name}_s"] = round(time.perf_counter() - t0, 1)
    return out


def heal_record(path: Path) -> dict:
    """What `prune --heal` cut and how it healed, from its record."""
    record = json.loads((path / "edgeprune-pruned.json").read_text())
    return {"removed": record["removed"]["layers"], "heal": record.get("heal")}


def table(path: Path) -> str:
    """python bench/tables.py heal-recovery-cpu"""
    from edgeprune.methods.distill import share_regained

    data = json.loads(Path(path).read_text())
    ref = data["reference"]
    base, unhealed = ref["unpruned_wiki"], ref["unhealed_wiki"]
    lines = ["| model | heal | heal s | WikiText-2 | × unhealed | held-out | lost log-ppl regained |",
             "|---|---|---|---|---|---|---|",
             f"| unpruned | – | – | {base:.2f} | – | {ref['unpruned_heldout']:.2f} | – |",
             f"| −6 angular (13–18) | none | – | {unhealed:.2f} | 1.000 | {ref['unhealed_heldout']:.2f} | – |"]
    for name, r in data["models"].items():
        heal = r["heal"] or {}
        regained = share_regained(base, unhealed, r["ppl_wiki"])
        g = heal.get("global") or {}
        label = heal.get("chosen", "none") + (global_label(g) if g else "")
        lines.append(f"| {name} | {label} | {heal.get('seconds', 0):.0f} | {r['ppl_wiki']:.2f} "
                     f"| {r['ppl_wiki'] / unhealed:.3f} | {r['ppl_heldout']:.2f} | {100 * regained:.0f} % |")
    return "\n".join(lines) + "\n"


def global_label(g: dict) -> str:
    """' + global 8 min, 762 tok/s (kept)', with the text and the teacher's top-K pass when recorded."""
    text = Path(g["text"]).name if g.get("text", "calibration stream") != "calibration stream" else ""
    teacher = f", teacher top-K {g['teacher_topk_s'] / 60:.1f} min" if "teacher_topk_s" in g else ""
    if g.get("teacher_reused_rows"):
        teacher += f" ({g['teacher_reused_rows']} of {g['teacher_reused_rows'] + g['teacher_rows']} windows from the fit's states)"
    tail = ", teacher's tail kept as a class" if g.get("tail") else ""
    return (f" + global {g['seconds'] / 60:.1f} min{' on ' + text if text else ''}, {g['tokens_per_s']:.0f} tok/s, "
            f"{g['epochs']} epochs{teacher}{tail} ({'kept' if g.get('kept') else 'discarded'})")


def reference() -> dict:
    """Unpruned and unhealed -6 (block 13-18) on the same windows, from the GPU sweep's fp32 rows."""
    rows = json.loads(SWEEP.read_text())["rows"]
    teacher = next(r for r in rows if r["phase"] == "teacher")
    unhealed = next(r for r in rows if r["start"] == 13 and r["heal"] == "none")
    return {"unpruned_wiki": teacher["ppl_wiki"], "unpruned_heldout": teacher["ppl_heldout"],
            "unhealed_wiki": unhealed["ppl_wiki"], "unhealed_heldout": unhealed["ppl_heldout"], "source": SWEEP.name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=HF folder (repeat)")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--append", action="store_true", help="keep the models already in --out (same protocol)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old = json.loads(args.out.read_text()) if args.append and args.out and args.out.is_file() else None
    if old and (old["windows"], old["ctx"]) != (args.windows, args.ctx):
        raise SystemExit(f"{args.out} holds {old['windows']} x {old['ctx']} windows; --append needs the same")
    models = dict(old["models"]) if old else {}
    commands = old["command"] if old and isinstance(old["command"], list) else [old["command"]] if old else []
    for spec in args.model:
        name, path = spec.split("=", 1)
        models[name] = evaluate(Path(path), args.windows, args.ctx) | {"threads": args.threads}
        print(name, {k: v for k, v in models[name].items() if k != "heal"}, flush=True)
    from benchout import write_json

    command = "python bench/heal_eval.py " + " ".join(sys.argv[1:])
    write_json(args.out, {"command": commands + [command] if commands else command, "windows": args.windows,
                          "ctx": args.ctx, "torch": torch.__version__,
                          "reference": reference(), "models": models})


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
