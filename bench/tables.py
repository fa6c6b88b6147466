"""The tables of bench/README.md, rendered from the JSON committed under bench/out/.

    python bench/tables.py NAME      # print one table (NAME: see TABLES)
    python bench/tables.py --check   # exit 1 if a table in bench/README.md differs from its JSON

In bench/README.md every generated table sits between `<!-- table: NAME -->` and `<!-- /table -->`;
tests/test_bench_readme.py regenerates each one and diffs it against the README.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
README = Path(__file__).resolve().parent / "README.md"
BLOCK = re.compile(r"<!-- table: ([\w-]+) -->\n(.*?)<!-- /table -->", re.S)


def _load(rel: str):
    return json.loads((OUT / rel).read_text())


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def first_run() -> str:
    """`edgeprune plan --target host` on a fresh machine: every iteration of bench/out/first-run."""
    m = _load("first-run/manifest.json")
    base = m["iterations"][0]
    rows = []
    for it in m["iterations"]:
        b = it["bench"]
        at_level = it.get("latency_at_level_s", it["latency_s"])
        ok = all(c["met"] for c in it["checks"].values()) and it.get("ppl_ratio", 1.0) <= m["budget"]["max_ppl_ratio"]
        rows.append([f"−{it['k']}" if it["k"] else "0", str(it["layers"]), f"{it['gguf_bytes'] / 1e6:.1f}",
                     f"{b['tg_tps']['median']:.1f}", f"{it['latency_s']:.3f}", f"{at_level:.3f}",
                     f"×{base['latency_s'] / at_level:.2f}", f"{it['ppl']['ppl']:.2f}", f"×{it.get('ppl_ratio', 1.0):.2f}",
                     "met" if ok else "missed"])
    return _table(["layers removed", "layers", "GGUF MB", "tg tok/s", "latency s", "latency at baseline level s",
                   "speed-up", "ppl (8×512)", "ppl ratio", "budget"], rows)


def slice_() -> str:
    """A fixed 1.2 s budget on SmolLM2 (bench/out/slice)."""
    m = _load("slice/manifest.json")
    rows = []
    for it in m["iterations"]:
        b = it["bench"]
        ok = all(c["met"] for c in it["checks"].values()) and it.get("ppl_ratio", 1.0) <= m["budget"]["max_ppl_ratio"]
        rows.append([str(it["k"]), str(it["layers"]), f"{it['gguf_bytes'] / 1e6:.1f}", f"{b['pp_tps']['median']:.0f}",
                     f"{b['tg_tps']['median']:.1f} ± {b['tg_tps']['stdev']:.1f}", f"{it['latency_s']:.3f}",
                     f"{b['peak_rss_bytes'] / 1e6:.0f}", f"{it['ppl']['ppl']:.2f}", f"×{it.get('ppl_ratio', 1.0):.2f}",
                     "met" if ok else "missed"])
    return _table(["layers removed", "layers", "GGUF MB", "pp tok/s", "tg tok/s", "latency s", "peak RSS MB",
                   "ppl (8×512)", "ppl ratio", "budget"], rows)


def methods() -> str:
    """Every pruning method on SmolLM2 (bench/out/methods.json)."""
    results = _load("methods.json")["results"]
    base = next(r["ppl"] for r in results if r["family"] == "baseline")
    rows = []
    for r in results:
        s = r.get("scoring") or {}
        load = s.get("load_avg_1m")
        rows.append([r["family"], r["label"], f"{100 * r['removed']:.1f}%", f"{r['ppl']:.2f}", f"{r['ppl'] / base:.2f}",
                     f"{s['wall_s']:.1f}" if "wall_s" in s else "", f"{load:.1f}" if load is not None else "",
                     str(s["peak_rss_mb"]) if "peak_rss_mb" in s else "", str(r.get("calib_tokens", ""))])
    return _table(["family", "configuration", "layer params removed", "WikiText-2 ppl", "x baseline",
                   "scoring wall s", "load avg", "scoring peak RSS MB", "calib tokens"], rows)


def methods_memory() -> str:
    """Block-influence scoring in memory vs streamed layer by layer (bench/out/methods.json, `memory`)."""
    rows = [[r["label"], r["method"], str(r["calib_tokens"]), f"{r['wall_s']:.1f}", str(r["rss_after_imports_mb"]),
             str(r["peak_rss_mb"]), str(r["model_bytes_mb"])] for r in _load("methods.json")["memory"]]
    return _table(["scoring path", "method", "calib tokens", "wall s", "RSS after imports MB", "peak RSS MB",
                   "weights on disk MB"], rows)


EVAL_ROWS = {"unpruned-Q4_K_M": "unpruned Q4_K_M GGUF", "bi6-hf": "−6 layers, HF fp32",
             "bi6-Q4_K_M": "−6 layers, Q4_K_M GGUF", "bi6-recovered-Q4_K_M": "−6 layers + recovery, Q4_K_M"}


def eval_ppl() -> str:
    """WikiText-2 perplexity and KL divergence vs the HF parent (bench/out/eval/full/ppl.json)."""
    data = _load("eval/full/ppl.json")
    first = next(iter(data.values()))
    rows = [["parent, HF fp32 (30 layers)", f"{first['parent_ppl']:.2f}", "—", "—"]]
    for key, r in data.items():
        rows.append([EVAL_ROWS.get(key, key), f"{r['ppl']:.2f}",
                     f"{r['kld_mean']:.3f} / {r['kld_median']:.3f} / {r['kld_p99']:.2f}", f"{100 * r['top1_agree']:.1f} %"])
    return _table(["model", "ppl", "KLD vs parent (mean / median / p99, nats)", "top-1 agree with parent"], rows)


ZERO_SHOT = {"unpruned": "unpruned Q4_K_M", "bi6": "−6 layers (BI) Q4_K_M", "bi6-recovered": "−6 layers + recovery Q4_K_M",
             "a6-span": "−6 layers (angular) + down-span heal Q4_K_M",
             "a6-span-g8": "the same + 8 min global distillation Q4_K_M",
             "a6-tail-gw15": "down-span + 15 min distillation, tail kept, WikiText-2 val. text Q4_K_M",
             "a6-tail-c4-15": "the same on C4 alone Q4_K_M",
             "a6-c4-reuse": "C4 alone again, faster heal stage Q4_K_M"}
# issue #15's zero-shot bar: the mean over these (as each row shows it) vs the unpruned model's, and LAMBADA
BAR_TASKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq", "openbookqa")


def eval_zero_shot() -> str:
    """Zero-shot accuracies on the full sets, --backend torch (bench/out/eval/full/<model>/<task>.json)."""
    tasks = sorted(p.stem for p in (OUT / "eval" / "full" / "unpruned").glob("*.json"))
    recs = {(m, t): json.loads(p.read_text()) for m in ZERO_SHOT for t in tasks
            if (p := OUT / "eval" / "full" / m / f"{t}.json").is_file()}
    rows = [[task] + [_score_cell(recs[m, task], task) if (m, task) in recs else "—" for m in ZERO_SHOT]
            for task in tasks]
    # without BoolQ too: the unpruned model's BoolQ is below the set's 62 % "yes" rate (label bias), and
    # damaged models gain there
    for name, bar in ((f"mean of {len(BAR_TASKS)}", BAR_TASKS),
                      ("mean without boolq", tuple(t for t in BAR_TASKS if t != "boolq"))):
        mean = {m: sum(_score(recs[m, t], t) for t in bar) / len(bar) for m in ZERO_SHOT
                if all((m, t) in recs for t in bar)}
        rows.append([f"{name} (× unpruned)"] + [
            f"{100 * mean[m]:.1f} (×{mean[m] / mean['unpruned']:.3f})" if m in mean else "—" for m in ZERO_SHOT])
    lam = {m: _score(recs[m, "lambada_openai"], "lambada_openai") for m in ZERO_SHOT if (m, "lambada_openai") in recs}
    rows.append(["lambada_openai × unpruned"] + [f"×{lam[m] / lam['unpruned']:.3f}" if m in lam else "—"
                                                 for m in ZERO_SHOT])
    return _table(["task (metric, items)", *ZERO_SHOT.values()], rows)


def _metric(rec: dict, task: str) -> tuple[str, float]:
    """The metric a task's row shows (acc_norm, else acc, else its first) and its value."""
    scores = rec["scores"].get(task) or next(iter(rec["scores"].values()))
    metric = "acc_norm" if "acc_norm" in scores else ("acc" if "acc" in scores else next(iter(scores)))
    return metric, scores[metric]


def _score(rec: dict, task: str) -> float:
    return _metric(rec, task)[1]


def _score_cell(rec: dict, task: str) -> str:
    metric, value = _metric(rec, task)
    n = rec["n"].get(task) if isinstance(rec.get("n"), dict) else None
    shown = f"{100 * value:.1f}" if metric.startswith("acc") else f"{value:.2f}"
    return f"{shown} ({metric}{f', n={n}' if n else ''})"


def planner() -> str:
    """Relative budgets on host-dram, runs 8 and 9 (bench/out/planner-run8.json, planner-run9.json)."""
    rows = []
    for run in ("planner-run8.json", "planner-run9.json"):
        for res in _load(run)["results"]:
            if res["latency_fraction"] is None:
                continue
            for row in res["rows"][1:]:
                rows.append([run.split("-")[1].split(".")[0], f"{res['budget']} {res['latency_fraction']:g}",
                             str(row["iteration"]), row["candidate"],
                             f"{row['tg_measured']:.1f} / {row['tg_predicted']:.1f}",
                             f"{row['tg_err_paired_pct']:+.1f} % ({row['tg_err_pct']:+.1f} %)",
                             f"{row['latency_at_level']:.3f} / {row['latency_predicted']:.3f}",
                             f"{row['latency_err_paired_pct']:+.1f} % ({row['latency_err_pct']:+.1f} %)",
                             f"{row['ppl_ratio']:.3f} ({row['ppl_ratio_predicted']:.3f})", "yes" if row["met"] else "no"])
    return _table(["run", "budget", "iter", "candidate", "tg tok/s measured / predicted", "tg err at drift (abs)",
                   "latency at level / predicted, s", "latency err at drift (abs)", "ppl ratio (pred)", "met"], rows)


def _bench_script(name: str):
    """A bench script's module (bench/ is not a package): its own `table` renders its JSON."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Tables a bench script renders itself (its `table(path)`): name -> (script, JSON under bench/out/)
SCRIPT_TABLES = {"heal-methods": ("heal", "heal/dev-bf16-methods.json"),
                 "heal-variants": ("heal", "heal/dev-bf16-depth6.json"),
                 "heal-width": ("heal", "heal/dev-bf16-width.json"),
                 "heal-gguf": ("heal_gguf", "heal/gguf-depth6.json"),
                 "heal-local": ("heal_gguf", "heal/gguf-local.json"),
                 "heal-recovery": ("heal_gguf", "heal/gguf-recovery.json"),
                 "heal-recovery-cpu": ("heal_eval", "heal/recovery-cpu.json"),
                 "heal-width-cpu": ("heal", "heal/width-cpu.json"),
                 "heal-fronts": ("fronts", "heal/fronts.json"),
                 "heal-fronts-versus": ("fronts", "heal/fronts.json", "versus_table"),
                 "heal-fronts-epyc": ("fronts", "heal/fronts-epyc.json"),
                 "heal-fronts-epyc-versus": ("fronts", "heal/fronts-epyc.json", "versus_table"),
                 "heal-throughput": ("heal_throughput", "heal/throughput.json"),
                 "heal-throughput-epyc": ("heal_throughput", "heal/throughput-epyc.json"),
                 "heal-tail-ab": ("heal_tail_ab", "heal/tail-ab.json"),
                 "heal-lr-ab": ("heal_tail_ab", "heal/lr-ab.json"),
                 "heal-sweep": ("heal_sweep", "heal/sweep-gpu.json"),
                 "heal-sweep-2": ("heal_sweep", "heal/sweep-gpu-2.json"),
                 "heal-sweep-3": ("heal_sweep", "heal/sweep-gpu-3.json"),
                 "quant-imatrix": ("quant_levers", "quant/imatrix.json"),
                 "quant-mixes": ("quant_levers", "quant/mixes.json"),
                 "scale-stages": ("scale", "scale"),
                 "scale-export": ("scale", "scale", "phases_table"),
                 "scale-cost": ("scale_cost", "scale/cost-llama-3.2-1b.json"),
                 "scale-arm16g": ("scale_cost", "scale/cost-llama-3.2-1b.json", "paper_table"),
                 "scale-cost-8b": ("scale_cost", "scale/cost-llama-3.1-8b.json", "scale_table"),
                 "scale-fsdp": ("fsdp_scale", "scale/fsdp-llama-3.2-1b.json")}


def _script_table(script: str, rel: str, func: str = "table") -> str:
    return getattr(_bench_script(script), func)(OUT / rel) + "\n"


TABLES = {"first-run": first_run, "slice": slice_, "methods": methods, "methods-memory": methods_memory,
          "eval-ppl": eval_ppl, "eval-zero-shot": eval_zero_shot, "planner": planner,
          **{name: functools.partial(_script_table, *where) for name, where in SCRIPT_TABLES.items()}}


def readme_blocks(text: str) -> dict[str, str]:
    return {name: body for name, body in BLOCK.findall(text)}


def check() -> list[str]:
    """Names of the README tables that differ from what their JSON renders."""
    blocks = readme_blocks(README.read_text())
    return [name for name, body in blocks.items() if TABLES[name]() != body]


def write() -> list[str]:
    """Rewrite every README table block from its JSON; returns the names that changed."""
    text = README.read_text()
    changed = [name for name, body in readme_blocks(text).items() if TABLES[name]() != body]
    text = BLOCK.sub(lambda m: f"<!-- table: {m.group(1)} -->\n{TABLES[m.group(1)]()}<!-- /table -->", text)
    README.write_text(text)
    return changed


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        for name in write():
            print(f"bench/README.md table '{name}' rewritten")
        return 0
    if argv == ["--check"]:
        stale = check()
        for name in stale:
            print(f"bench/README.md table '{name}' differs from `python bench/tables.py {name}`")
        return 1 if stale else 0
    if len(argv) != 1 or argv[0] not in TABLES:
        print(f"usage: python bench/tables.py {{{','.join(TABLES)}}} | --check | --write", file=sys.stderr)
        return 2
    sys.stdout.write(TABLES[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
