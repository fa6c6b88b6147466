"""Two fronts in one run: quantization alone vs pruning + healing, on the default model.

    python bench/fronts.py --out bench/out/heal/fronts.json      # measure (idle machine: it times decode)
    python bench/fronts.py --table bench/out/heal/fronts.json    # markdown table
    python bench/fronts.py --plot bench/out/heal/fronts.json     # bench/out/heal/fronts.png

Quant-only: the unpruned model at each of --quant-front. Pruned + healed: block-influence depth
cuts (--depths) healed by --heal, x --pruned-quants, and width cuts (-1/3 KV groups, -20 % FFN)
healed, at Q4_K_M. Every GGUF is built by the planner's own cached steps. Per point: decode and
prefill tok/s paired against the unpruned Q4_K_M in one process (ratio of interleaved
measurements, bench_worker.run_paired), GGUF bytes, WikiText-2 perplexity from llama.cpp's
logits (--windows x --ctx) and, with --kld-windows, KL(unpruned HF || GGUF).
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
from edgeprune.devices.runners import BenchSpec, host_info, run_local
from edgeprune.store import StepStore
from edgeprune.stages.evaluate import evaluate_kld, evaluate_ppl
from edgeprune.stages.export import export_gguf
from edgeprune.stages.heal_step import heal_step
from edgeprune.stages.load import import_model
from edgeprune.stages.prune import prune_layers
from edgeprune.stages.score import score_depth
from edgeprune.stages.width_step import prune_width_step
from edgeprune.toolchain.hf import resolve_model


def models(store, hf_dir, digest, args) -> list[dict]:
    """(label, front, model dir, key, quant) of every point, built through the planner's steps."""
    pts = [dict(label=f"unpruned {q}", front="quant-only", dir=hf_dir, key=digest, quant=q)
           for q in args.quant_front.split(",")]
    heal = Heal(method=args.heal)
    stats, _ = score_depth(store, hf_dir, digest, "block-influence", Calibration())
    for k in (int(x) for x in args.depths.split(",")):
        removed = registry.get("depth", "block-influence").select(stats, k)
        d, key = prune_layers(store, hf_dir, digest, removed)
        d, key, _ = heal_step(store, hf_dir, digest, d, key, removed, heal)
        pts += [dict(label=f"-{k}L healed {q}", front="pruned+healed", dir=d, key=key, quant=q)
                for q in args.pruned_quants.split(",")]
    widths = (("-1/3 KV groups", 6, 2, None), ("-20% FFN", None, None, 1216)) if args.width else ()
    for label, heads, kv, ffn in widths:
        d, key = prune_width_step(store, hf_dir, digest, heads, kv, ffn, Calibration(), None)
        d, key, _ = heal_step(store, hf_dir, digest, d, key, [], heal)
        pts.append(dict(label=f"{label} healed Q4_K_M", front="pruned+healed", dir=d, key=key, quant="Q4_K_M"))
    return pts


def measure(store, pts, args) -> list[dict]:
    text = eval_text()
    text_hash = hashlib.sha256(text.encode()).hexdigest()
    ggufs = [export_gguf(store, p["dir"], p["key"], Export(quant=p["quant"])) for p in pts]
    ref = next(g for (g, _), p in zip(ggufs, pts) if p["label"] == "unpruned Q4_K_M")
    hf_dir = pts[0]["dir"]
    rows = []
    for p, (gguf, meta) in zip(pts, ggufs):
        gkey = f"{p['key']}:{p['quant']}"
        ppl = evaluate_ppl(store, gguf, gkey, text, text_hash, args.ctx, args.windows, args.threads)
        row = {"label": p["label"], "front": p["front"], "quant": p["quant"], "bytes": meta["bytes"],
               "layers": meta["layers"], "ppl": round(ppl["ppl"], 3), "ppl_windows": ppl["windows"]}
        if args.kld_windows:
            k = evaluate_kld(store, gguf, gkey, hf_dir, pts[0]["key"], text, text_hash, 512, args.kld_windows,
                             args.threads)
            row.update(kld_mean=k["kld_mean"], kld_p99=k["kld_p99"], top1_agree=k["top1_agree"])
        if args.prepare:
            pass  # exports, heals and perplexities are cached steps: a later run only benchmarks
        elif Path(gguf) != Path(ref):
            t0 = time.perf_counter()
            b = run_local(gguf, BenchSpec(64, 100, args.reps, 1, args.threads), reference=ref)
            row.update(tg_ratio=b["paired"]["tg_ratio"]["median"], pp_ratio=b["paired"]["pp_ratio"]["median"],
                       tg_rse=b["paired"]["tg_ratio"]["rse"], tg_tps=b["tg_tps"]["median"],
                       ref_tg_tps=b["reference"]["tg_tps"]["median"], bench_s=round(time.perf_counter() - t0, 1))
        else:
            row.update(tg_ratio=1.0, pp_ratio=1.0)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    base = next(r for r in data["rows"] if r["label"] == "unpruned Q4_K_M")
    lines = ["| front | model | MB | decode × (paired) | prefill × | WikiText-2 ppl | ppl × |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(data["rows"], key=lambda r: (r["front"], -r["tg_ratio"])):
        lines.append(f"| {r['front']} | {r['label']} | {r['bytes'] / 1e6:.1f} | {r['tg_ratio']:.3f} | "
                     f"{r['pp_ratio']:.3f} | {r['ppl']:.2f} | {r['ppl'] / base['ppl']:.2f} |")
    return "\n".join(lines)


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    base = next(r for r in data["rows"] if r["label"] == "unpruned Q4_K_M")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for front, marker in (("quant-only", "o"), ("pruned+healed", "s")):
        pts = [r for r in data["rows"] if r["front"] == front]
        ax.scatter([r["ppl"] / base["ppl"] for r in pts], [r["tg_ratio"] for r in pts], marker=marker, label=front)
        for r in pts:
            ax.annotate(r["label"].replace("unpruned ", "").replace(" healed", "h"),
                        (r["ppl"] / base["ppl"], r["tg_ratio"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("WikiText-2 perplexity / unpruned Q4_K_M")
    ax.set_ylabel("decode tok/s / unpruned Q4_K_M (paired)")
    ax.set_title("SmolLM2-135M: quantization alone vs pruning + healing")
    ax.legend()
    ax.grid(alpha=0.3)
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--quant-front", default="Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K")
    ap.add_argument("--depths", default="3,6")
    ap.add_argument("--pruned-quants", default="Q4_K_M,Q4_0,Q3_K_M")
    ap.add_argument("--heal", default="down-cut")
    ap.add_argument("--width", action=argparse.BooleanOptionalAction, default=True,
                    help="also the healed width cuts at Q4_K_M")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--kld-windows", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prepare", action="store_true",
                    help="build and score every point without timing it (safe while other jobs run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=Path.home() / ".cache" / "edgeprune" / "steps")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.plot:
        print(plot(args.plot))
        return 0
    store = StepStore(args.store)
    hf_dir, digest = import_model(store, resolve_model(None))
    rows = measure(store, models(store, hf_dir, digest, args), args)
    out = {"command": "python " + " ".join(sys.argv), "host": host_info(), "threads": args.threads,
           "protocol": {"ctx": args.ctx, "windows": args.windows, "bench": "64-token prompt, 100 decoded, paired "
                        "with the unpruned Q4_K_M (ABBA, 10-token slices)"}, "rows": rows}
    from benchout import write_json  # bench/ is on sys.path when a script runs; not when tables.py loads it

    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
