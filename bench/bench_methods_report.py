"""Aggregate bench/methods.py results: methods.json, a markdown table and the ppl-vs-removed plot."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def _machine() -> dict:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def load_rows(partial: Path) -> list[dict]:
    rows = {}
    for line in partial.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r["family"] in ("width", "sparsity"):  # early rows cut "wanda-2:4" at its colon
                r["label"] = r["job"].split(":", 1)[1]
            rows[(r["job"], r["label"])] = r  # a rerun of a job replaces its rows
    return list(rows.values())


def _load(scoring: dict) -> str:
    """1-minute load average when the scoring pass ended (2 cores): how shared the machine was."""
    return f"{scoring['load_avg_1m']:.1f}" if "load_avg_1m" in scoring else ""


def table(rows: list[dict], base_ppl: float) -> str:
    out = ["| family | configuration | layer params removed | WikiText-2 ppl | x baseline | scoring wall s | "
           "load avg | scoring peak RSS MB | calib tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sc = r.get("scoring", {})
        out.append(f"| {r['family']} | {r['label']} | {r['removed']:.1%} | {r['ppl']:.2f} | {r['ppl'] / base_ppl:.2f} | "
                   f"{sc.get('wall_s', '')} | {_load(sc)} | {sc.get('peak_rss_mb', '')} | {r.get('calib_tokens', '')} |")
    return "\n".join(out)


def memory_table(rows: list[dict]) -> str:
    out = ["| scoring path | method | calib tokens | wall s | RSS after imports MB | peak RSS MB | weights on disk MB |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {r['method']} | {r['calib_tokens']} | {r['wall_s']} | {r['rss_after_imports_mb']} | "
                   f"{r['peak_rss_mb']} | {r['model_bytes_mb']} |")
    return "\n".join(out)


def plot(rows: list[dict], base_ppl: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, family in zip(axes, ("depth", "width", "sparsity")):
        fam = [r for r in rows if r["family"] == family]
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # sparsity has > 10 series
        series: dict[str, list] = {}
        for r in fam:
            # one line per method; width sizes ("ffn-20%", "ffn-40%") join one line
            key = r["method"] if family == "depth" else r["label"].rsplit("-", 1)[0] if r["label"].endswith("%") \
                and family == "width" else r["label"]
            series.setdefault(key, []).append((r["removed"], r["ppl"]))
        for key, pts in sorted(series.items()):
            pts = sorted(pts)
            xs, ys = [0.0] + [p[0] for p in pts], [base_ppl] + [p[1] for p in pts]
            ax.plot(xs, ys, marker="o", label=key)
        ax.set_title(f"{family}")
        ax.set_xlabel("fraction of decoder-layer parameters removed / zeroed")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("WikiText-2 test ppl (log)")
    fig.suptitle("SmolLM2-135M-Instruct: perplexity vs parameters removed (no recovery fine-tuning)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(partial: Path, out: Path, protocol: dict) -> None:
    rows = load_rows(partial)
    base = next((r for r in rows if r["family"] == "baseline"), None)
    if base is None:
        print("no baseline yet")
        return
    order = {"baseline": 0, "depth": 1, "width": 2, "sparsity": 3, "memory": 4}
    rows.sort(key=lambda r: (order[r["family"]], r.get("method", ""), r["removed"], r.get("calib_tokens", 0),
                             r["label"]))
    mem = [r for r in rows if r["family"] == "memory"]
    rows = [r for r in rows if r["family"] != "memory"]
    (out / "methods.json").write_text(json.dumps({"machine": _machine(), "protocol": protocol, "results": rows, "memory": mem}, indent=2))
    plot(rows, base["ppl"], out / "methods.png")
    print(table(rows, base["ppl"]))
    if mem:
        print()
        print(memory_table(mem))
