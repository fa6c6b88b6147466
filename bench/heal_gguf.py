"""Healing on the deployed path: prune -> heal -> GGUF (llama.cpp's converter and quantizer) ->
perplexity from llama.cpp's logits, through the same cached steps the planner runs.

    python bench/heal_gguf.py --out bench/out/heal/gguf-depth6.json
    python bench/heal_gguf.py --table bench/out/heal/gguf-depth6.json

Protocol (issue #15): WikiText-2 test and a held-out non-Wikipedia text (LAMBADA passages, fiction),
each in `--windows` (40) non-overlapping `--ctx` (1024) token windows, every token after the first
of a window scored (stages/evaluate.gguf_perplexity). Q8_0 stands in for the unquantized model
(KL to F16 ~0.005 nats on the verify prompt), Q4_K_M is what ships.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from edgeprune import registry
from edgeprune.config.recipe import Calibration, Export, Heal
from edgeprune.data import eval_text
from edgeprune.data.texts import heldout_text
from edgeprune.store import StepStore
from edgeprune.stages.evaluate import evaluate_ppl
from edgeprune.stages.export import export_gguf
from edgeprune.stages.heal_step import heal_step
from edgeprune.stages.load import import_model
from edgeprune.stages.prune import prune_layers
from edgeprune.stages.score import score_depth
from edgeprune.toolchain.hf import resolve_model


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def measure(store, model_dir, key, label, args, texts, extra) -> dict:
    row = {"model": label, **extra}
    for quant in args.quants.split(","):
        gguf, meta = export_gguf(store, model_dir, key, Export(quant=quant))
        row[f"bytes_{quant}"] = meta["bytes"]
        for name, text in texts.items():
            t0 = time.perf_counter()
            windows = args.heldout_windows if name == "heldout" else args.windows
            ppl = evaluate_ppl(store, gguf, f"{key}:{quant}", text, _sha(text), args.ctx, windows, args.threads)
            row[f"ppl_{name}_{quant}"] = round(ppl["ppl"], 3)
            row[f"eval_s_{name}_{quant}"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(row), flush=True)
    return row


def heal_config(spec: str, calib: Calibration) -> Heal:
    """'down-cut', 'down-cut+local=4', 'down-cut+local=4+global=8': a method, then minutes of
    layer-local and of global distillation."""
    method, *opts = spec.split("+")
    minutes = {k: float(v) for k, v in (o.split("=") for o in opts)}
    return Heal(method=method, calibration=calib, local_minutes=minutes.get("local", 0),
                global_minutes=minutes.get("global", 0))


def rows_for(store, hf_dir, digest, args, texts) -> list[dict]:
    rows = [measure(store, hf_dir, digest, "unpruned", args, texts, {"heal": "-"})]
    for depth in args.depth.split(","):
        stats, _ = score_depth(store, hf_dir, digest, depth, Calibration())
        removed = registry.get("depth", depth).select(stats, args.remove)
        pruned_dir, pruned_key = prune_layers(store, hf_dir, digest, removed)
        for heal in args.heal.split(","):
            d, k, info, t0 = pruned_dir, pruned_key, {}, time.perf_counter()
            if heal != "none":
                cfg = heal_config(heal, Calibration(samples=args.calib_samples, seq_len=args.calib_len, seed=1))
                d, k, info = heal_step(store, hf_dir, digest, pruned_dir, pruned_key, removed, cfg)
            extra = {"depth": depth, "removed": removed, "heal": heal, "chosen": info.get("chosen"),
                     "heal_s": info.get("seconds"), "holdout_ppl": info.get("holdout_ppl"),
                     "local": info.get("local"), "global": info.get("global")}
            rows.append(measure(store, d, k, f"-{args.remove}L {depth}", args, texts, extra))
    return rows


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    rows, quants = data["rows"], data["quants"]
    base = rows[0]
    head = "| model | heal (chosen) | " + " | ".join(f"wiki {q} | × | held-out {q} | ×" for q in quants)
    lines = [head + " | wiki regained | heal s |", "|" + "---|" * (4 + 4 * len(quants))]
    for r in rows:
        cells = []
        for q in quants:
            for t in ("wiki", "heldout"):
                v = r[f"ppl_{t}_{q}"]
                cells += [f"{v:.2f}", f"{v / base[f'ppl_{t}_{q}']:.2f}"]
        heal = r["heal"] + (f" ({r['chosen']})" if r.get("chosen") and r["heal"] == "auto" else "")
        lines.append(f"| {r['model']} | {heal} | " + " | ".join(cells) + f" | {_regained(r, rows, quants[0])} | "
                     f"{r.get('heal_s') or '–'} |")
    return "\n".join(lines)


def _regained(row: dict, rows: list[dict], quant: str) -> str:
    """Share of the log-perplexity lost to this row's pruning that its healing won back (WikiText-2)."""
    from edgeprune.methods.distill import share_regained

    unhealed = [r for r in rows if r["model"] == row["model"] and r["heal"] == "none"]
    if row["heal"] in ("none", "-") or not unhealed:
        return "–"
    key = f"ppl_wiki_{quant}"
    return f"{100 * share_regained(rows[0][key], unhealed[0][key], row[key]):.0f} %"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path)
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--depth", default="block-influence,angular")
    ap.add_argument("--heal", default="none,down-cut,auto",
                    help="heal methods; METHOD+local=M+global=G adds M minutes of layer-local and G of global distillation")
    ap.add_argument("--quants", default="Q8_0,Q4_K_M")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--heldout-windows", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=Path.home() / ".cache" / "edgeprune" / "steps")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    store = StepStore(args.store)
    hf_dir, digest = import_model(store, resolve_model(None))
    texts = {"wiki": eval_text(), "heldout": heldout_text()}
    rows = rows_for(store, hf_dir, digest, args, texts)
    out = {"command": "python " + " ".join(sys.argv), "quants": args.quants.split(","),
           "protocol": {"ctx": args.ctx, "windows": args.windows, "heldout_windows": args.heldout_windows, "scorer": "llama.cpp logits",
                        "heldout": "lambada_openai_test.jsonl, first 2000 passages", "heldout_sha256": _sha(texts["heldout"]),
                        "wiki_sha256": _sha(texts["wiki"])},
           "heal_calibration": {"samples": args.calib_samples, "seq_len": args.calib_len, "seed": 1},
           "threads": args.threads, "rows": rows}
    from benchout import write_json  # bench/ is on sys.path when a script runs; not when tables.py loads it

    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
