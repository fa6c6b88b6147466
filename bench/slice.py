"""End-to-end slice benchmark on the default model (SmolLM2-135M-Instruct).

1. `edgeprune plan --target host` with a loose budget: the unpruned Q4_K_M baseline.
2. The same plan with a latency budget FRACTION x the baseline's measured latency, which the
   unpruned model misses; records every iteration, the chosen model and the plan's wall time.
3. Full WikiText-2 test perplexity (every non-overlapping 512-token window) of baseline and final.
Writes bench/out/slice.json and prints a markdown table. Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def plan(out: Path, *args: str) -> tuple[dict, float]:
    t0 = time.time()
    cmd = ["edgeprune", "plan", "--target", "host", "--out", str(out), *args]
    subprocess.run(cmd, check=False)
    return json.loads((out / "manifest.json").read_text()), time.time() - t0


def full_ppl(gguf: str, windows: int | None) -> dict:
    extra = ["--windows", str(windows)] if windows else []
    # the windows protocol: the one the planner's quality gate and this script's published numbers use
    res = subprocess.run(["edgeprune", "eval", "--model", gguf, "--ctx", "512", "--protocol", "windows", *extra],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fraction", type=float, default=0.85)
    ap.add_argument("--max-ppl-ratio", type=float, default=2.0)
    ap.add_argument("--store", default=str(OUT / "store"))
    ap.add_argument("--eval-windows", type=int, default=None, help="limit the full-test ppl (default: all)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    # depth pruning + Q4_K_M only: the slice this script measures (the joint quant search is bench/planner.py)
    common = ["--store", args.store, "--max-ppl-ratio", str(args.max_ppl_ratio), "--tokens", "100",
              "--quants", "Q4_K_M"]
    base, base_wall = plan(OUT / "slice-baseline", *common, "--latency", "100")
    base_lat = base["iterations"][0]["latency_s"]
    budget = round(base_lat * args.fraction, 3)
    # a cold store for the budgeted run, so its wall time is the whole plan (import included)
    cold = Path(args.store + "-cold")
    shutil.rmtree(cold, ignore_errors=True)
    common[1] = str(cold)
    final, wall = plan(OUT / "slice-tight", *common, "--latency", str(budget))
    chosen = final["result"].get("chosen_k")
    it_final = next((it for it in final["iterations"] if it["k"] == chosen), final["iterations"][-1])
    t0 = time.time()
    ppl_base = full_ppl(base["iterations"][0]["gguf"], args.eval_windows)
    ppl_final = full_ppl(it_final["gguf"], args.eval_windows)
    result = {"budget_latency_s": budget, "baseline_latency_s": base_lat, "met": final["result"]["met"],
              "reason": final["result"]["reason"], "layers_removed": chosen, "plan_wall_s": round(wall, 1),
              "iterations": [{k: it[k] for k in ("k", "layers", "gguf_bytes", "latency_s", "checks")}
                             | {"tg_tps": it["bench"]["tg_tps"], "pp_tps": it["bench"]["pp_tps"],
                                "ppl_8x512": it["ppl"]["ppl"], "peak_rss_bytes": it["bench"]["peak_rss_bytes"]}
                             for it in final["iterations"]],
              "full_wikitext2_ppl": {"baseline": ppl_base, "final": ppl_final, "seconds": round(time.time() - t0, 1)},
              "host": final["iterations"][0]["bench"]["host"], "versions": final["versions"]}
    (OUT / "slice.json").write_text(json.dumps(result, indent=2))
    print(table(result))


def table(r: dict) -> str:
    rows = ["| model | layers | GGUF MB | pp tok/s | tg tok/s (median ± sd) | latency s (64+100) | peak RSS MB | "
            "ppl 8x512 | ppl full test |", "|---|---|---|---|---|---|---|---|---|"]
    for it in r["iterations"]:
        name = "unpruned Q4_K_M" if it["k"] == 0 else f"-{it['k']} layers (BI) Q4_K_M"
        full = {0: r["full_wikitext2_ppl"]["baseline"]["ppl"]}.get(it["k"])
        if it["k"] == r["layers_removed"] and it["k"]:
            full = r["full_wikitext2_ppl"]["final"]["ppl"]
        rows.append(f"| {name} | {it['layers']} | {it['gguf_bytes'] / 1e6:.1f} | {it['pp_tps']['median']:.0f} | "
                    f"{it['tg_tps']['median']:.1f} ± {it['tg_tps']['stdev']:.1f} | {it['latency_s']:.3f} | "
                    f"{it['peak_rss_bytes'] / 1e6:.0f} | {it['ppl_8x512']:.2f} | "
                    f"{'' if full is None else f'{full:.2f}'} |")
    rows.append(f"\nBudget {r['budget_latency_s']} s ({r['baseline_latency_s']:.3f} s measured unpruned): "
                f"{'met' if r['met'] else 'NOT met'} — {r['reason']}; plan wall time {r['plan_wall_s']} s.")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
