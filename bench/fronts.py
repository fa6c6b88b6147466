"""Two fronts in one run: quantization alone vs pruning + healing, on the default model.

    python bench/fronts.py --out bench/out/heal/fronts.json      # measure (idle machine: it times decode)
    python bench/fronts.py --table bench/out/heal/fronts.json    # markdown table
    python bench/fronts.py --plot bench/out/heal/fronts.json     # bench/out/heal/fronts.png

Quant-only: the unpruned model at each of --quant-front. Pruned + healed: depth cuts (--depths, by
--depth-method) healed by --heal, healed folders built elsewhere (--extra), and width cuts (-1/3 KV
groups, -20 % FFN) healed by --width-heal, each x --pruned-quants. Every GGUF is built by the
planner's own cached steps. Per point: decode and prefill tok/s paired against the unpruned Q4_K_M in
one process (ratio of interleaved measurements, bench_worker.run_paired), GGUF bytes, and on
llama.cpp's perplexity protocol (--windows chunks of --ctx tokens of WikiText-2 test, second half of
each scored) perplexity and KL(unpruned F16 GGUF || GGUF), the F16's log-probs saved once.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from edgeprune import registry
from edgeprune.config.recipe import Calibration, Export, Heal
from edgeprune.data.texts import EVAL_TEXT_FILE
from edgeprune.devices.runners import BenchSpec, host_info, run_local
from edgeprune.errors import ExportError
from edgeprune.store import StepStore
from edgeprune.stages.export import export_gguf
from edgeprune.stages.heal_step import heal_step
from edgeprune.stages.load import import_model
from edgeprune.stages.prune import prune_layers
from edgeprune.stages.score import score_depth
from edgeprune.stages.width_step import prune_width_step
from edgeprune.toolchain.hf import resolve_model
from edgeprune.toolchain.llamacpp import convert_hf_to_gguf


def external_key(hf_dir: Path) -> str:
    """A content key for a healed HF folder built outside the store (`--extra`): its weights' hash."""
    h = hashlib.sha256()
    for f in sorted(hf_dir.glob("*.safetensors")) + [hf_dir / "config.json"]:
        h.update(f.read_bytes())
    return "extra-" + h.hexdigest()[:16]


def models(store, hf_dir, digest, args) -> list[dict]:
    """(label, front, model dir, key, quant) of every point, built through the planner's steps."""
    pts = [dict(label=f"unpruned {q}", front="quant-only", dir=hf_dir, key=digest, quant=q)
           for q in args.quant_front.split(",")]
    quants = args.pruned_quants.split(",")
    heal = Heal(method=args.heal)
    stats, _ = score_depth(store, hf_dir, digest, args.depth_method, Calibration())
    for k in (int(x) for x in args.depths.split(",") if x):
        removed = registry.get("depth", args.depth_method).select(stats, k)
        d, key = prune_layers(store, hf_dir, digest, removed)
        d, key, _ = heal_step(store, hf_dir, digest, d, key, removed, heal)
        pts += [dict(label=f"-{k}L {args.heal} {q}", front="pruned+healed", dir=d, key=key, quant=q) for q in quants]
    for spec in args.extra:
        label, _, path = spec.partition("=")
        d = Path(path)
        pts += [dict(label=f"{label} {q}", front="pruned+healed", dir=d, key=external_key(d), quant=q) for q in quants]
    widths = {"kv": ("-1/3 KV groups", 6, 2, None), "ffn": ("-20% FFN", None, None, 1216)}
    for label, heads, kv, ffn in (widths[w] for w in args.width_cuts.split(",") if w and args.width):
        d, key = prune_width_step(store, hf_dir, digest, heads, kv, ffn, Calibration(), None)
        d, key, _ = heal_step(store, hf_dir, digest, d, key, [], Heal(method=args.width_heal))
        pts += [dict(label=f"{label} {args.width_heal} {q}", front="pruned+healed", dir=d, key=key, quant=q)
                for q in quants]
    return pts


TOOL = Path.home() / ".cache" / "edgeprune" / "llama.cpp-build-0.3.36" / "bin" / "llama-perplexity"
STATS = {"ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)", "ppl_unc": r"Mean PPL\(Q\)\s*:\s*[\d.]+ ± ([\d.]+)",
         "parent_ppl": r"Mean PPL\(base\)\s*:\s*([\d.]+)", "kld_mean": r"Mean\s+KLD:\s*([-\d.]+)",
         "kld_mean_unc": r"Mean\s+KLD:\s*[-\d.]+ ± ([\d.]+)", "kld_median": r"Median\s+KLD:\s*([-\d.]+)",
         "kld_99": r"99\.0%\s+KLD:\s*([-\d.]+)", "top1_agree": r"Same top p:\s*([\d.]+)"}


def run_tool(args, *extra: str) -> str:
    cmd = [str(args.tool), "-f", str(args.text_file), "-c", str(args.ctx), "--chunks", str(args.windows),
           "-t", str(args.threads), "-b", str(args.ctx), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr[-500:]}")
    return res.stdout + res.stderr


def parse_stats(out: str) -> dict:
    stats = {k: float(m.group(1)) for k, pat in STATS.items() if (m := re.search(pat, out))}
    stats["top1_agree"] = stats["top1_agree"] / 100  # the tool prints percent
    return stats


def quality(ggufs: dict[str, Path], parent_dir: Path, parent_key: str, args) -> dict[str, dict]:
    """Perplexity and KL(unpruned F16 || GGUF) of every point from llama.cpp's own `llama-perplexity`
    (--windows chunks of --ctx, second half of each scored), against base log-probs of the unpruned
    F16 GGUF saved once (--kl-divergence-base); kept in --quality-cache as each model ends, so a
    rerun scores only what is missing. The F16 and its base log-probs are named by the parent's
    content key and the windows, so a work folder shared by another parent or protocol is not
    read stale; a cached score counts only for the same ctx and chunks. The C++ tool is used
    because scoring every position through the Python binding took 10-20 s a chunk here."""
    from benchout import write_json  # bench/ is on sys.path when a script runs; not when tables.py loads it

    cache = json.loads(args.quality_cache.read_text()) if args.quality_cache.is_file() else {}
    work = args.quality_work
    work.mkdir(parents=True, exist_ok=True)
    args.text_file = work / "wiki.test.raw"
    if not args.text_file.is_file():
        args.text_file.write_bytes(gzip.decompress(EVAL_TEXT_FILE.read_bytes()))
    base = work / f"f16-{parent_key[:16]}-{args.ctx}x{args.windows}.kld"
    if not base.is_file():
        f16 = work / f"unpruned-{parent_key[:16]}-f16.gguf"
        if not f16.is_file():
            convert_hf_to_gguf(parent_dir, f16, "f16")
        run_tool(args, "-m", str(f16), "--kl-divergence-base", str(base))
    for key, gguf in ggufs.items():
        if cache.get(key, {}).get("chunks") == args.windows and cache[key].get("ctx") == args.ctx:
            continue
        t0 = time.perf_counter()
        out = run_tool(args, "-m", str(gguf), "--kl-divergence-base", str(base), "--kl-divergence")
        cache[key] = parse_stats(out) | {"chunks": args.windows, "ctx": args.ctx, "quality_s": round(time.perf_counter() - t0, 1)}
        write_json(args.quality_cache, cache)
        print(key, json.dumps(cache[key]), flush=True)
    return cache


def exported(store, pts) -> tuple[list[dict], list[tuple[Path, dict]], list[dict]]:
    """Every point's GGUF, through the export step and its verification; a point whose GGUF the
    export refuses (it drifts from F16 past the quant type's bound) is kept aside with the reason."""
    kept, ggufs, refused = [], [], []
    for p in pts:
        try:
            ggufs.append(export_gguf(store, p["dir"], p["key"], Export(quant=p["quant"])))
            kept.append(p)
        except ExportError as exc:
            refused.append({"label": p["label"], "front": p["front"], "quant": p["quant"], "refused": str(exc)})
            print(json.dumps(refused[-1]), flush=True)
    return kept, ggufs, refused


def measure(store, pts, args) -> list[dict]:
    pts, ggufs, refused = exported(store, pts)
    keys = [f"{p['key']}:{p['quant']}" for p in pts]
    scores = quality({k: g for k, (g, _) in zip(keys, ggufs)}, pts[0]["dir"], pts[0]["key"], args)
    rows = [{"label": p["label"], "front": p["front"], "quant": p["quant"], "bytes": meta["bytes"],
             "layers": meta["layers"], "gguf_key": key} | scores[key] for p, (_, meta), key in zip(pts, ggufs, keys)]
    if args.prepare:  # exports, heals and scores are cached: a later run only benchmarks
        return rows + refused
    return timed(rows, [g for g, _ in ggufs], args) + refused


def timed(rows: list[dict], ggufs: list[Path], args) -> list[dict]:
    """Decode and prefill of every point, paired with the unpruned Q4_K_M in one process each."""
    ref = next(g for g, r in zip(ggufs, rows) if r["label"] == "unpruned Q4_K_M")
    for row, gguf in zip(rows, ggufs):
        if Path(gguf) != Path(ref):
            t0 = time.perf_counter()
            b = run_local(gguf, BenchSpec(64, 100, args.reps, 1, args.threads), reference=ref)
            row.update(tg_ratio=b["paired"]["tg_ratio"]["median"], pp_ratio=b["paired"]["pp_ratio"]["median"],
                       tg_rse=b["paired"]["tg_ratio"]["rse"], tg_tps=b["tg_tps"]["median"],
                       ref_tg_tps=b["reference"]["tg_tps"]["median"], bench_s=round(time.perf_counter() - t0, 1))
        else:
            row.update(tg_ratio=1.0, pp_ratio=1.0)
        print(json.dumps(row), flush=True)
    return rows


def prepared(path: Path, store: Path) -> tuple[list[dict], list[Path], list[dict]]:
    """The rows of a --prepare run, their GGUFs (found in the store by each export step's key: model
    key, quant) and the refused rows. Every step's key carries the package's code fingerprint, so after
    any edit a rerun through the steps would rebuild everything; this times exactly the files scored."""
    every = json.loads(path.read_text())["rows"]
    rows = [r for r in every if "refused" not in r]
    found = {}
    for step in sorted(store.glob("export-*/step.json"), key=lambda f: f.stat().st_mtime):
        rec = json.loads(step.read_text())
        found[f"{rec['key']['model']}:{rec['key']['export']['quant']}"] = step.parent / rec["meta"]["gguf"]
    return rows, [found[r["gguf_key"]] for r in rows], [r for r in every if "refused" in r]


def merged(old: dict, new: dict) -> dict:
    """`old` with the rows of `new` put in place of the rows that share their label (new labels are
    added); the commands of both are kept, in order, and the protocol is `new`'s."""
    fresh = {r["label"]: r for r in new["rows"] if r["label"] != "unpruned Q4_K_M"}
    rows = [fresh.pop(r["label"], r) for r in old["rows"]] + list(fresh.values())
    commands = old.get("commands", [old["command"]]) + [new["command"]]
    return {k: v for k, v in new.items() if k != "command"} | {"commands": commands, "rows": rows}


def _base(rows: list[dict]) -> dict:
    return next(r for r in rows if r["label"] == "unpruned Q4_K_M")


def _measured(path: Path) -> list[dict]:
    return [r for r in json.loads(path.read_text())["rows"] if "refused" not in r]


def table(path: Path) -> str:
    every = json.loads(path.read_text())["rows"]
    rows = _measured(path)
    base = _base(rows)
    lines = ["| front | model | MB | decode × (paired) | prefill × | WikiText-2 ppl | ppl × | KLD mean | top-1 agree |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["front"], r["ppl"])):
        lines.append(f"| {r['front']} | {r['label']} | {r['bytes'] / 1e6:.1f} | {r['tg_ratio']:.3f} | "
                     f"{r['pp_ratio']:.3f} | {r['ppl']:.2f} | {r['ppl'] / base['ppl']:.2f} | {r['kld_mean']:.3f} | "
                     f"{100 * r['top1_agree']:.1f} % |")
    for r in every:
        if "refused" in r:
            why = r["refused"].split(": ", 1)[-1].split(" — ")[0]
            lines.append(f"| {r['front']} | {r['label']} | export refused: {why} | | | | | | |")
    return "\n".join(lines)


def versus(rows: list[dict], lo: float = 1.1, hi: float = 1.6) -> list[dict]:
    """Each pruned point with perplexity within lo..hi x the unpruned Q4_K_M, against the fastest
    quant-only point at equal or lower perplexity: the issue's bar is a decode ratio >= 1.2 there."""
    base = _base(rows)["ppl"]
    quant = [r for r in rows if r["front"] == "quant-only"]
    out = []
    for r in sorted((r for r in rows if r["front"] == "pruned+healed"), key=lambda r: r["ppl"]):
        if not lo <= r["ppl"] / base <= hi:
            continue
        rivals = [q for q in quant if q["ppl"] <= r["ppl"]]
        best = max(rivals, key=lambda q: q["tg_ratio"])
        out.append({"label": r["label"], "ppl_x": r["ppl"] / base, "tg": r["tg_ratio"], "rival": best["label"],
                    "rival_ppl_x": best["ppl"] / base, "rival_tg": best["tg_ratio"],
                    "speedup": r["tg_ratio"] / best["tg_ratio"]})
    return out


def versus_table(path: Path) -> str:
    lines = ["| pruned + healed | ppl × | decode × | fastest quant-only at ≤ its ppl | ppl × | decode × | "
             "pruned / quant-only decode |", "|---|---|---|---|---|---|---|"]
    for v in versus(_measured(path)):
        lines.append(f"| {v['label']} | {v['ppl_x']:.2f} | {v['tg']:.3f} | {v['rival']} | {v['rival_ppl_x']:.2f} | "
                     f"{v['rival_tg']:.3f} | {v['speedup']:.3f} |")
    return "\n".join(lines)


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _measured(path)
    base = _base(rows)
    fig, ax = plt.subplots(figsize=(8, 5))
    models: dict[str, list[dict]] = {}
    for r in rows:  # a label is "<model> <quant>": one series per model, each point named by its quant
        models.setdefault(r["label"].rsplit(" ", 1)[0], []).append(r)
    markers = iter("osD^v<>ph*")
    for model, pts in models.items():
        ax.scatter([r["ppl"] / base["ppl"] for r in pts], [r["tg_ratio"] for r in pts], marker=next(markers, "x"),
                   label=model if model != "unpruned" else "quant-only: unpruned")
        for r in pts:
            ax.annotate(r["quant"], (r["ppl"] / base["ppl"], r["tg_ratio"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.axvspan(1.1, 1.6, color="0.9", zorder=0, label="the bar's range")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("WikiText-2 perplexity / unpruned Q4_K_M (llama.cpp protocol, 40 x 1,024)")
    ax.set_ylabel("decode tok/s / unpruned Q4_K_M (paired)")
    ax.set_title("SmolLM2-135M: quantization alone vs pruning + healing")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--prepared", type=Path, help="time the points of this --prepare run's JSON, as scored")
    ap.add_argument("--versus", type=Path, help="the bar's comparison at equal perplexity, as a table")
    ap.add_argument("--quant-front", default="Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K")
    ap.add_argument("--depths", default="3,6")
    ap.add_argument("--depth-method", default="angular")
    ap.add_argument("--extra", action="append", default=[], metavar="LABEL=DIR",
                    help="a pruned and healed HF folder built elsewhere, at each of --pruned-quants")
    ap.add_argument("--pruned-quants", default="Q4_K_M,Q4_0,Q3_K_M")
    ap.add_argument("--heal", default="down-span")
    ap.add_argument("--width-heal", default="down-cut")
    ap.add_argument("--width", action=argparse.BooleanOptionalAction, default=True,
                    help="also the healed width cuts at Q4_K_M")
    ap.add_argument("--width-cuts", default="kv,ffn", help="which width cuts: kv (-1/3 KV groups), ffn (-20%% FFN)")
    ap.add_argument("--merge", type=Path, help="with --prepared: replace the rows of this fronts JSON that share a "
                    "label with the timed ones (their reference is the same unpruned Q4_K_M), keep the rest")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=40, help="llama.cpp perplexity chunks of --ctx tokens")
    ap.add_argument("--quality-cache", type=Path, default=Path("bench/out/heal/fronts-quality.json"))
    ap.add_argument("--quality-work", type=Path, default=Path("/tmp/fronts-quality"),
                    help="the F16 GGUF, its base log-probs (GBs) and the text file")
    ap.add_argument("--tool", type=Path, default=TOOL, help="llama.cpp's llama-perplexity (tests/llama_tools.py builds it)")
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
    if args.versus:
        print(versus_table(args.versus))
        return 0
    if args.prepared:
        rows, ggufs, refused = prepared(args.prepared, args.store)
        rows = timed(rows, ggufs, args) + refused
    else:
        store = StepStore(args.store)
        hf_dir, digest = import_model(store, resolve_model(None))
        rows = measure(store, models(store, hf_dir, digest, args), args)
    out = {"command": "python " + " ".join(sys.argv), "host": host_info(), "threads": args.threads,
           "protocol": {"ctx": args.ctx, "windows": args.windows, "quality": "llama-perplexity chunks, KLD vs the "
                        "unpruned F16 GGUF", "bench": "64-token prompt, 100 decoded, paired "
                        "with the unpruned Q4_K_M (ABBA, 10-token slices)"}, "rows": rows}
    from benchout import write_json  # bench/ is on sys.path when a script runs; not when tables.py loads it

    if args.merge:
        out = merged(json.loads(args.merge.read_text()), out)
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
