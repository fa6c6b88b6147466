"""Do two plan runs decide the same? Compare their manifests' decisions, and everything else once
the volatile facts (times, paths, step hashes, load) are left out.

    python bench/plan_decisions.py /tmp/plan-before /tmp/plan-after

The decisions: the result (met, chosen k and quant, iteration, reason), every iteration's candidate,
removed layers, file size, perplexity and budget checks, and every search-log entry. A refactor that
claims "behaviour unchanged" runs one `edgeprune plan` before and after (same runner, recipe, flags;
the deterministic `fake` runner and a fresh EDGEPRUNE_CACHE each) and shows this prints no difference.
Exit status 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Facts that differ between two runs of one plan: when, where, how long, under which hashes.
VOLATILE = {"created", "wall_time_s", "steps", "versions", "host", "llama_cpp", "environment", "measured_at",
            "at", "loadavg", "seconds", "gguf", "gguf_key", "baseline", "dir", "out", "file", "general.name",
            "model_sha256", "reused_cached_measurement", "remeasured_because", "load_s"}


def decisions(manifest: dict) -> dict:
    """What the plan chose and why, per iteration and per search step."""
    def iteration(it: dict) -> dict:
        return {"candidate": it["candidate"], "k": it["k"], "quant": it["quant"],
                "removed_layers": it["removed_layers"], "layers": it["layers"], "width_method": it.get("width_method"),
                "gguf_bytes": it["gguf_bytes"], "ppl": it["ppl"]["ppl"], "ppl_ratio": it.get("ppl_ratio"),
                "met": {n: c["met"] for n, c in it["checks"].items()}}

    result = {k: manifest["result"].get(k) for k in ("met", "chosen_k", "chosen_quant", "iteration", "reason")}
    return {"result": result, "iterations": [iteration(it) for it in manifest["iterations"]],
            "search": strip(manifest["search"])}


def strip(value):
    """`value` without the VOLATILE keys, at every depth."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in {'before' if k in a else 'after'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}"]


def read(run: Path) -> dict:
    return json.loads((run / "manifest.json" if run.is_dir() else run).read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="--out folder (or manifest.json) of the first run")
    ap.add_argument("after", type=Path, help="--out folder (or manifest.json) of the second run")
    args = ap.parse_args(argv)
    a, b = read(args.before), read(args.after)
    for what, x, y in (("decisions", decisions(a), decisions(b)), ("manifest (volatile keys left out)",
                                                                      strip(a), strip(b))):
        diff = differences(x, y)
        print(f"{what}: {'identical' if not diff else f'{len(diff)} difference(s)'}")
        for line in diff:
            print(f"  {line}")
    d = decisions(a)
    print(f"chosen: k={d['result']['chosen_k']} {d['result']['chosen_quant']} (met={d['result']['met']}); "
          f"{len(d['iterations'])} iterations, {len(d['search'])} search-log entries")
    return 1 if differences(decisions(a), decisions(b)) or differences(strip(a), strip(b)) else 0


if __name__ == "__main__":
    sys.exit(main())
