"""Matplotlib PNGs of a run: layer importance, quality/latency vs depth, speed vs size, MMLU subfields,
the planner's Pareto front.

Each function takes plain data (from the manifest or eval records) and a path, writes one PNG and
returns the path, or None when the data to draw it are absent.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers
import matplotlib.pyplot as plt  # noqa: E402

from edgeprune.atomic import atomic_write  # noqa: E402

SUBFIELDS = ["medical_genetics", "professional_law", "philosophy", "college_mathematics", "high_school_physics",
             "machine_learning"]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    try:  # atomic: a killed report leaves no half PNG
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def importance_plot(scores: list[float], removed: list[int], method: str, path: Path) -> Path | None:
    if not scores:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.2))
    colors = ["tab:red" if i in removed else "tab:blue" for i in range(len(scores))]
    ax.bar(range(len(scores)), scores, color=colors)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{method} score")
    ax.set_yscale("log")
    ax.set_title(f"Per-layer importance (red: removed, {len(removed)} layers)")
    return _save(fig, path)


def depth_plot(iterations: list[dict], budget: dict, path: Path, accuracy: dict[int, float] | None = None
               ) -> Path | None:
    """Perplexity (and zero-shot accuracy when given, keyed by layers removed) and latency vs layers removed."""
    its = sorted(iterations, key=lambda it: it["k"])
    if not its:
        return None
    ks = [it["k"] for it in its]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(ks, [it["ppl"]["ppl"] for it in its], "o-", color="tab:blue", label="WikiText-2 ppl")
    if budget.get("max_ppl_ratio"):
        ax.axhline(its[0]["ppl"]["ppl"] * budget["max_ppl_ratio"], color="tab:blue", ls=":", label="quality floor")
    ax.set_xlabel("layers removed")
    ax.set_ylabel("perplexity", color="tab:blue")
    right = ax.twinx()
    right.plot(ks, [it["latency_s"] for it in its], "s--", color="tab:orange", label="latency")
    if budget.get("latency_s"):
        right.axhline(budget["latency_s"], color="tab:orange", ls=":", label="latency budget")
    right.set_ylabel("latency (s)", color="tab:orange")
    if accuracy:
        right.plot([], [], "^-", color="tab:green", label="mean zero-shot acc (right inset)")
        inset = ax.inset_axes([0.08, 0.55, 0.3, 0.35])
        inset.plot(sorted(accuracy), [accuracy[k] for k in sorted(accuracy)], "^-", color="tab:green")
        inset.set_title("acc", fontsize=7)
        inset.tick_params(labelsize=6)
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax.legend(lines, labels, fontsize=7, loc="upper center")
    ax.set_title("Quality and latency vs depth")
    return _save(fig, path)


def required_decode_tps(budget: dict, pp_tps: float) -> float | None:
    """Decode speed the latency budget needs, given the prompt speed; or the explicit decode budget."""
    if budget.get("decode_tps"):
        return float(budget["decode_tps"])
    lat, n_p, n_a = budget.get("latency_s"), budget.get("prompt_tokens"), budget.get("answer_tokens")
    if not (lat and n_a and pp_tps):
        return None
    left = lat - (n_p or 0) / pp_tps
    return n_a / left if left > 0 else None


def speed_size_plot(iterations: list[dict], budget: dict, path: Path) -> Path | None:
    if not iterations:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    sizes = [it["gguf_bytes"] / 1e6 for it in iterations]
    tg = [it["bench"]["tg_tps"] for it in iterations]
    ax.errorbar(sizes, [t["median"] for t in tg], yerr=[t["stdev"] for t in tg], fmt="o", capsize=3)
    for s, t, it in zip(sizes, tg, iterations):
        ax.annotate(f"-{it['k']}", (s, t["median"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    pp = sorted(it["bench"]["pp_tps"]["median"] for it in iterations)[len(iterations) // 2]
    need = required_decode_tps(budget, pp)
    if need:
        how = "decode budget" if budget.get("decode_tps") else "latency budget at median prompt speed"
        ax.axhline(need, color="tab:red", ls="--", label=f"{how}: >= {need:.0f} tok/s")
    if budget.get("max_file_gb"):
        ax.axvline(budget["max_file_gb"] * 1e3, color="tab:purple", ls="--", label="file-size budget")
    ax.set_xlabel("GGUF size (MB)")
    ax.set_ylabel("decode tok/s (median ± sd)")
    ax.set_title("Decode speed vs size (label: layers removed)")
    if need or budget.get("max_file_gb"):
        ax.legend(fontsize=8)
    return _save(fig, path)


def mmlu_subfield_plot(records: list[dict], path: Path) -> Path | None:
    """Grouped bars: one group per subfield, one bar per evaluated model."""
    rows = [(r["label"], r["tasks"]["scores"]) for r in records if "tasks" in r]
    rows = [(label, s) for label, s in rows if any(f"mmlu_{f}" in s for f in SUBFIELDS)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(rows)
    for j, (label, scores) in enumerate(rows):
        vals = [scores.get(f"mmlu_{f}", {}).get("acc", float("nan")) for f in SUBFIELDS]
        ax.bar([i + j * width for i in range(len(SUBFIELDS))], vals, width, label=label)
    ax.axhline(0.25, color="grey", ls=":", label="chance (0.25)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(SUBFIELDS))])
    ax.set_xticklabels([f.replace("_", "\n") for f in SUBFIELDS], fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_title("MMLU subfields (reference study's choice)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _speed_axis(budget: dict) -> tuple[str, str, float | None]:
    """(key in a front row / prediction, axis label, budget line): latency when the budget has one."""
    if budget.get("latency_s") or not budget.get("decode_tps"):
        return "latency_s", f"latency s ({budget.get('prompt_tokens')}+{budget.get('answer_tokens')} tokens)", \
            budget.get("latency_s")
    return "tg_tps", "decode tok/s", budget.get("decode_tps")


def front_plot(search: list[dict], iterations: list[dict], budget: dict, path: Path) -> Path | None:
    """The planner's Pareto front (predicted speed vs predicted quality) at its last decision, the
    budget line and quality floor, and every executed candidate: predicted (hollow) -> measured (filled)."""
    fronts = [d for d in search if d.get("front")]
    its = [it for it in iterations if it.get("predicted")]
    if not fronts and not its:
        return None
    key, label, limit = _speed_axis(budget)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    shown = [(fronts[0], "--", "front, first decision"), (fronts[-1], "-", "front, last decision")] \
        if len(fronts) > 1 else [(d, "-", "front (predicted)") for d in fronts]
    for d, style, name in shown:
        rows = sorted(d["front"], key=lambda r: r["ppl_ratio"])
        ax.plot([r["ppl_ratio"] for r in rows], [r[key] for r in rows], style, marker=".", color="tab:blue",
                alpha=0.5 if style == "--" else 1.0, label=name)
    for i, it in enumerate(its):
        p, ratio = it["predicted"], it.get("ppl_ratio", 1.0)
        got = it["latency_s"] if key == "latency_s" else it["bench"]["tg_tps"]["median"]
        ax.plot(p["ppl_ratio"], p[key], "o", mfc="none", color="tab:orange", label="predicted" if i == 0 else None)
        ax.plot(ratio, got, "o", color="tab:red", label="measured" if i == 0 else None)
        ax.annotate("", (ratio, got), (p["ppl_ratio"], p[key]), arrowprops={"arrowstyle": "->", "color": "grey"})
        depth = f"-{it['k']}L" if it["k"] else "full"
        ax.annotate(f"{i}: {depth} {it.get('quant', '')}", (ratio, got), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    if limit:
        ax.axhline(limit, color="tab:green", ls=":", label=f"budget: {label.split(' (')[0]} {limit:g}")
    if budget.get("max_ppl_ratio"):
        ax.axvline(budget["max_ppl_ratio"], color="tab:purple", ls=":", label=f"quality floor x{budget['max_ppl_ratio']:g}")
    if ax.get_xlim()[1] > 4:  # a front reaching ppl x40 would squeeze the candidates near x1-3 together
        ax.set_xscale("log")
    ax.set_xlabel("perplexity ratio vs unpruned baseline (lower is better)")
    ax.set_ylabel(label)
    ax.set_title("Planner: Pareto front and executed candidates (number: iteration)")
    ax.legend(fontsize=7)
    return _save(fig, path)
