"""Evaluation benchmark: SmolLM2 unpruned vs -6 layers (block influence), both Q4_K_M GGUF.

Phases (each resumable: finished pieces are kept as JSON under bench/out/eval/):
  tasks  zero-shot lm-eval tasks through the GGUF adapter, one model and task at a time, timed
  ppl    WikiText-2 test perplexity (same tokens for every model) and mean KLD vs the parent
  table  markdown table, with paired bootstrap CIs of pruned - unpruned on the same items

Prepare the models first:
  edgeprune prune --remove 6 --out W/smollm2-bi6
  edgeprune export --model W/smollm2-bi6 --quant Q4_K_M --out W/smollm2-bi6.Q4_K_M.gguf
  edgeprune export --model <imported HF folder> --quant Q4_K_M --out W/smollm2.Q4_K_M.gguf
Numbers, not pass/fail. Wall times are measured on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "eval"
TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande", "lambada_openai", "openbookqa",
         "mmlu_subfields"]


def _models(pairs: list[str]) -> dict[str, Path]:
    return {p.split("=", 1)[0]: Path(p.split("=", 1)[1]) if "=" in p else None for p in pairs}


def run_task_phase(models: dict[str, Path], tasks: list[str], limit: int, mmlu_limit: int, threads: int,
                   backend: str = "llama.cpp", task_limits: dict[str, int] | None = None) -> None:
    """One JSON per model and task under OUT; limit 0 = the full set. The model is loaded once per model."""
    from edgeprune.toolchain.lmeval import model_for, run_tasks

    for name, path in models.items():
        todo = [t for t in tasks if not (OUT / name / f"{t}.json").is_file()]
        lm = model_for(path, threads, 2048, backend) if todo and backend == "torch" else None
        for task in todo:
            n = (task_limits or {}).get(task, mmlu_limit if task.startswith("mmlu") else limit) or None
            t0 = time.time()
            res = run_tasks(path, [task], n, threads=threads, backend=backend, lm=lm)
            res |= {"model": str(path), "limit": n, "wall_s": round(time.time() - t0, 1),
                    "loadavg_end": os.getloadavg()[0]}
            dst = OUT / name / f"{task}.json"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(json.dumps(res, indent=1))
            print(f"{name} {task} n={res['n']} {res['scores'].get(task)} {res['wall_s']} s", flush=True)


def run_ppl_phase(models: dict[str, Path], parent: Path, windows: int, ctx: int, threads: int) -> None:
    from edgeprune.stages.quality import compare_to_parent

    dst = OUT / "ppl.json"
    done = json.loads(dst.read_text()) if dst.is_file() else {}
    for name, path in models.items():
        if name in done:
            continue
        t0 = time.time()
        res = compare_to_parent(path, parent, ctx=ctx, windows=windows, threads=threads)
        done[name] = res | {"model": str(path), "parent": str(parent), "wall_s": round(time.time() - t0, 1)}
        dst.write_text(json.dumps(done, indent=1))
        print(name, json.dumps(done[name]), flush=True)


def _task_rows(names: list[str]) -> list[tuple[str, str, str]]:
    """(file task, score key, metric) for every score any model has, in TASKS order."""
    rows = []
    for task in TASKS:
        keys: list[str] = []
        for name in names:
            f = OUT / name / f"{task}.json"
            if f.is_file():
                keys += [k for k in json.loads(f.read_text())["scores"] if k not in keys]
        for key in sorted(keys, key=lambda k: (k != task, k)):
            for metric in ("acc", "acc_norm"):
                rows.append((task, key, metric))
    return rows


def _diff(rec: dict, base: str, task: str, key: str, metric: str) -> str | None:
    """Paired bootstrap of rec - base on the items both scored, as '+d [lo, hi]' in points."""
    from edgeprune.evaluation.metrics import paired_bootstrap

    bf = OUT / base / f"{task}.json"
    if not bf.is_file() or key not in rec["items"]:
        return None
    a, b = json.loads(bf.read_text())["items"].get(key, {}), rec["items"][key]
    ids = [i for i in a if i in b and metric in a[i]]
    r = paired_bootstrap([a[i][metric] for i in ids], [b[i][metric] for i in ids], iters=5000)
    return f"{100 * r['diff']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"


def _cell(name: str, task: str, key: str, metric: str, bases: list[str]) -> str:
    """Score, then the difference vs each earlier column in `bases` (first: plain, later: 'vs NAME')."""
    f = OUT / name / f"{task}.json"
    if not f.is_file():
        return "pending"
    rec = json.loads(f.read_text())
    v = rec["scores"].get(key, {}).get(metric)
    if v is None:
        return ""
    diffs = [(j, base, _diff(rec, base, task, key, metric)) for j, base in enumerate(bases) if base != name]
    parts = [d if j == 0 else f"vs {base} {d}" for j, base, d in diffs if d]
    return f"{100 * v:.1f}" + (f" ({'; '.join(parts)})" if parts else "")


def table(names: list[str], vs: list[str] = ()) -> str:
    """Columns in `names` order; every cell's CI is vs the first column, plus vs each of `vs` it follows."""
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    ppl = json.loads((OUT / "ppl.json").read_text()) if (OUT / "ppl.json").is_file() else {}
    pk = {n: next((k for k in ppl if k.startswith(n)), None) for n in names}
    lines.append("| WikiText-2 ppl | " + " | ".join(f"{ppl[pk[n]]['ppl']:.2f}" if pk[n] else "pending"
                                                   for n in names) + " |")
    lines.append("| KLD vs parent (nats) | " + " | ".join(f"{ppl[pk[n]]['kld_mean']:.4f}" if pk[n] else "pending"
                                                         for n in names) + " |")
    for task, key, metric in _task_rows(names):
        cells = [_cell(n, task, key, metric, names[:1] + [v for v in vs if names.index(v) < names.index(n)])
                 for n in names]
        if any(c not in ("", "pending") for c in cells):
            lines.append(f"| {key} {metric} | " + " | ".join(cells) + " |")
    lines.append("| wall time (s) per task file | " + " | ".join(
        ", ".join(f"{t}: {json.loads((OUT / n / f'{t}.json').read_text())['wall_s']:.0f}"
                  for t in TASKS if (OUT / n / f"{t}.json").is_file()) or "pending" for n in names) + " |")
    return "\n".join(lines)


def write_records(names: list[str]) -> list[Path]:
    """One `edgeprune eval`-shaped record per model (first = parent), for `edgeprune report`'s eval/ folder."""
    ppl = json.loads((OUT / "ppl.json").read_text()) if (OUT / "ppl.json").is_file() else {}
    out = []
    for j, name in enumerate(names):
        files = [OUT / name / f"{t}.json" for t in TASKS if (OUT / name / f"{t}.json").is_file()]
        if not files:
            continue
        parts = [json.loads(f.read_text()) for f in files]
        tasks = {"scores": {}, "items": {}, "n": {}, "limit": sorted({p["limit"] for p in parts})[-1]}
        for p in parts:
            for key in ("scores", "items", "n"):
                tasks[key].update(p[key])
        rec = {"schema": "edgeprune.eval/1", "label": name, "model": parts[0]["model"], "kind": "gguf",
               "tasks": tasks} | ({"role": "parent"} if j == 0 else {})
        key = next((k for k in ppl if k.startswith(name)), None)
        if key:
            rec["ppl"] = {k: v for k, v in ppl[key].items() if k != "parent"}
        dst = OUT / "records" / f"{name}.json"
        dst.parent.mkdir(exist_ok=True)
        dst.write_text(json.dumps(rec))
        out.append(dst)
    return out


def agreement(name: str, set_a: str, set_b: str) -> str:
    """Per task and metric: items scored by both sets, how many got the same correctness, and both accuracies
    (e.g. the llama.cpp scorer's results vs the torch scorer's for the same GGUF)."""
    root = Path(__file__).resolve().parent / "out" / "eval"
    lines = [f"| task | metric | items | same verdict | {set_a or 'base'} acc | {set_b or 'base'} acc |",
             "|---|---|---|---|---|---|"]
    for task in TASKS:
        fa, fb = root / set_a / name / f"{task}.json", root / set_b / name / f"{task}.json"
        if not (fa.is_file() and fb.is_file()):
            continue
        a, b = json.loads(fa.read_text())["items"], json.loads(fb.read_text())["items"]
        for key in b:
            ids = [i for i in b[key] if i in a.get(key, {})]
            for m in ("acc", "acc_norm"):
                ids_m = [i for i in ids if m in a[key][i] and m in b[key][i]]
                if not ids_m:
                    continue
                same = sum(a[key][i][m] == b[key][i][m] for i in ids_m) / len(ids_m)
                acc_a = sum(a[key][i][m] for i in ids_m) / len(ids_m)
                acc_b = sum(b[key][i][m] for i in ids_m) / len(ids_m)
                lines.append(f"| {key} | {m} | {len(ids_m)} | {100 * same:.0f} % | {100 * acc_a:.1f} | {100 * acc_b:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["tasks", "ppl", "table", "records", "agree"])
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH (repeat); order = table order")
    ap.add_argument("--parent", type=Path, help="reference model for KLD (HF folder or GGUF)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--mmlu-limit", type=int, default=20, help="items per MMLU subject")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vs", action="append", default=[], help="table: also paired CIs vs this column (repeat)")
    ap.add_argument("--backend", default="llama.cpp", choices=["llama.cpp", "torch"], help="task scorer for GGUFs")
    ap.add_argument("--task-limit", action="append", default=[], help="TASK=N, overrides --limit for TASK (repeat)")
    ap.add_argument("--set", default="", help="results sub-folder of bench/out/eval (e.g. full)")
    ap.add_argument("--other-set", default="torch-sample", help="agree: the set compared with --set")
    args = ap.parse_args()
    models = _models(args.model)
    global OUT
    OUT = OUT / args.set if args.set else OUT
    if args.phase == "tasks":
        run_task_phase(models, args.tasks.split(","), args.limit, args.mmlu_limit, args.threads, args.backend,
                       {t: int(n) for t, n in (x.split("=") for x in args.task_limit)})
    elif args.phase == "ppl":
        run_ppl_phase(models, args.parent, args.windows, args.ctx, args.threads)
    elif args.phase == "agree":
        for name in models:
            print(agreement(name, args.set, args.other_set))
    elif args.phase == "records":
        for path in write_records(list(models)):
            print(path)
    else:
        print(table(list(models), args.vs))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
