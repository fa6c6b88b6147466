"""Training-free healing on the default model: perplexity before/after each heal method.

    python bench/heal.py --out bench/out/heal/depth6.json                  # -6 layers, BI and angular
    python bench/heal.py --width --out bench/out/heal/width.json           # -1/3 KV groups, -20 % FFN
    python bench/heal.py --table bench/out/heal/depth6.json                # print the markdown table

Protocol (issue #15): fp32 torch model, WikiText-2 test in non-overlapping 1024-token windows
(`--windows`, 40 by default), plus a held-out non-Wikipedia text (LAMBADA passages: fiction),
scored the same way. Calibration: C4 windows from the package/shared data, disjoint from both.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from edgeprune import registry
from edgeprune.config.recipe import Calibration
from edgeprune.data import eval_text
from edgeprune.data.texts import heldout_text
from edgeprune.recovery.hf_ppl import hf_perplexity
from edgeprune.store import StepStore
from edgeprune.stages.calib import calibration_windows
from edgeprune.stages.heal import heal_model, teacher_states
from edgeprune.stages.load import import_model
from edgeprune.stages.score import score_depth
from edgeprune.surgery.layers import remove_layers
from edgeprune.toolchain.hf import load_model, resolve_model


def heal_spec(spec: str):
    """'down-cut' or a variant 'down-cut+damp=0.1+objective=l2+scope=all' (fields of HealMethod)."""
    import dataclasses

    from edgeprune.methods.heal import HealMethod

    name, *over = spec.split("+")
    base: HealMethod = registry.get("heal", name)
    fields = {k: (float(v) if k == "damp" else v == "1" if k == "o_proj" else v) for k, v in (o.split("=") for o in over)}
    return dataclasses.replace(base, name=spec, **fields)


def quality(model, tok, texts: dict, ctx: int, windows: int, bf16: bool = False) -> dict:
    # bf16 autocast (AMX) for quick comparisons; the protocol's numbers are fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return {name: round(hf_perplexity(model, tok, t, ctx, windows)["ppl"], 3) for name, t in texts.items()}


def _row(label: str, model, tok, texts, args, extra: dict) -> dict:
    t0 = time.perf_counter()
    q = quality(model, tok, texts, args.ctx, args.windows, args.bf16)
    row = {"model": label, **{f"ppl_{k}": v for k, v in q.items()}, "eval_s": round(time.perf_counter() - t0, 1),
           **extra}
    print(json.dumps(row), flush=True)
    return row


def depth_rows(teacher, tok, hf_dir, digest, store, windows, states, texts, args) -> list[dict]:
    rows = []
    for depth in args.depth.split(","):
        stats, _ = score_depth(store, hf_dir, digest, depth, Calibration())
        removed = registry.get("depth", depth).select(stats, args.remove)
        for heal in args.heal.split(","):
            student = remove_layers(copy.deepcopy(teacher), removed)
            info, t0 = {}, time.perf_counter()
            if heal != "none":
                info = heal_model(student, states, windows, removed, heal_spec(heal))
            extra = {"depth": depth, "removed": removed, "heal": heal, "heal_s": round(time.perf_counter() - t0, 1),
                     "final_error": info.get("final_error")}
            rows.append(_row(f"-{args.remove}L {depth}", student, tok, texts, args, extra))
            del student
    return rows


def width_rows(teacher, tok, windows, states, texts, args) -> list[dict]:
    from edgeprune.stages.width import prune_width

    rows = []
    for label, method, fraction, cut in (("-1/3 KV groups", "heads", 0.34, {"heads"}),
                                         ("-20% FFN", "ffn", 0.2, {"ffn"})):
        for heal in args.heal.split(","):
            student = copy.deepcopy(teacher)
            prune_width(student, windows, method, fraction, "groups", None)
            info, t0 = {}, time.perf_counter()
            if heal != "none":
                info = heal_model(student, states, windows, [], heal_spec(heal), width=frozenset(cut))
            extra = {"width": method, "fraction": fraction, "heal": heal,
                     "heal_s": round(time.perf_counter() - t0, 1), "final_error": info.get("final_error")}
            rows.append(_row(label, student, tok, texts, args, extra))
            del student
    return rows


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    base = data["unpruned"]
    lines = ["| model | heal | WikiText-2 ppl | × unpruned | held-out ppl | × unpruned | heal s |",
             "|---|---|---|---|---|---|---|",
             f"| unpruned | – | {base['ppl_wiki']:.2f} | 1.00 | {base['ppl_heldout']:.2f} | 1.00 | – |"]
    for r in data["rows"]:
        lines.append(f"| {r['model']} | {r['heal']} | {r['ppl_wiki']:.2f} | {r['ppl_wiki'] / base['ppl_wiki']:.2f} | "
                     f"{r['ppl_heldout']:.2f} | {r['ppl_heldout'] / base['ppl_heldout']:.2f} | {r['heal_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path)
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--depth", default="block-influence,angular")
    ap.add_argument("--heal", default="none,replaceme,replaceme-relative,down-cut,down-all-l2,down-all")
    ap.add_argument("--width", action="store_true", help="width candidates instead of depth")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="evaluate under bf16 autocast (quick comparisons)")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    torch.set_num_threads(args.threads)
    store = StepStore(Path.home() / ".cache" / "edgeprune" / "steps")
    hf_dir, digest = import_model(store, resolve_model(None))
    teacher, tok = load_model(hf_dir)
    teacher.float().eval()
    calib = Calibration(samples=args.calib_samples, seq_len=args.calib_len, seed=1)
    windows = calibration_windows(tok, calib)
    texts = {"wiki": eval_text(), "heldout": heldout_text()}
    t0 = time.perf_counter()
    states = teacher_states(teacher, windows)
    teacher_s = round(time.perf_counter() - t0, 1)
    unpruned = _row("unpruned", teacher, tok, texts, args, {"heal": "-", "heal_s": 0})
    rows = (width_rows(teacher, tok, windows, states, texts, args) if args.width
            else depth_rows(teacher, tok, hf_dir, digest, store, windows, states, texts, args))
    out = {"command": "python " + " ".join(sys.argv), "protocol": {"ctx": args.ctx, "windows": args.windows,
           "dtype": "bfloat16 autocast" if args.bf16 else "float32", "heldout": "lambada_openai_test.jsonl first 2000 passages",
           "heldout_sha256": hashlib.sha256(texts["heldout"].encode()).hexdigest()},
           "calibration": {**calib.model_dump(mode="json"), "tokens": int(windows.numel()), "teacher_s": teacher_s},
           "threads": args.threads, "torch": torch.__version__, "unpruned": unpruned, "rows": rows}
    from benchout import write_json  # bench/ is on sys.path when a script runs; not when tables.py loads it

    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
