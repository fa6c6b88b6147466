"""report.md: one table of every measured iteration, and the verdict."""

from __future__ import annotations

from edgeprune.report.labels import HowMeasured

KLD_NOTE = ("KLD vs parent: mean KL(parent || GGUF) of next-token distributions on the perplexity windows, "
            "parent = the unpruned HF checkpoint (nats).")


def _kld_cell(it: dict) -> str:
    cell = f"{it['kld']['kld_mean']:.3f}" if it.get("kld") else "—"
    return cell + (" (recovered)" if it.get("recovery") else "")


def iteration_table(iterations: list[dict], budget: dict) -> str:
    rows = ["| layers removed | layers | GGUF MB | pp tok/s | tg tok/s (± sd) | latency s | peak RSS MB | "
            "ppl | ppl ratio | KLD vs parent | budget | bench |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for it in iterations:
        b = it["bench"]
        ok = all(c["met"] for c in it["checks"].values()) and it.get("ppl_ratio", 1) <= budget["max_ppl_ratio"]
        rows.append(
            f"| {it['k']} | {it['layers']} | {it['gguf_bytes'] / 1e6:.1f} | {b['pp_tps']['median']:.1f} | "
            f"{b['tg_tps']['median']:.1f} ± {b['tg_tps']['stdev']:.1f} | {it['latency_s']:.3f} | "
            f"{b['peak_rss_bytes'] / 1e6:.0f} | {it['ppl']['ppl']:.2f} | {it.get('ppl_ratio', 1):.3f} | "
            f"{_kld_cell(it)} | "
            f"{'met' if ok else 'missed'} | {HowMeasured.of(b).pairing} |")
    return "\n".join(rows)


def how_measured_lines(iterations: list[dict]) -> list[str]:
    """Where and how the table's speeds were measured: one line when every row shares it (a run's
    rows normally do; the `bench` column says which were paired), else one per group of rows."""
    groups: dict[str, list[str]] = {}
    for it in iterations:
        groups.setdefault(HowMeasured.of(it["bench"]).machine(), []).append(str(it["k"]))
    if len(groups) == 1:
        return [f"Speeds {next(iter(groups))}."]
    return [f"Speeds of the rows with {', '.join(ks)} layers removed {text}." for text, ks in groups.items()]


def _budget(b: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in b.items() if v is not None) or "none"


def recovery_lines(iterations: list[dict]) -> list[str]:
    """One line per recovered iteration: what trained, on what, for how long, and the held-out ppl."""
    out = []
    for it in iterations:
        r = it.get("recovery")
        if r:
            out.append(f"Recovery of -{it['k']} layers: {r['mode']} on {r['data']}, {r['steps']} steps "
                       f"({r['tokens']} tokens) in {r['seconds'] / 60:.1f} min of training "
                       f"(budget {_budget(r['budget'])}; stopped by {r['stopped_by']}), held-out val ppl "
                       f"{r['initial_val_ppl']:.2f} -> {r['best_val_ppl']:.2f}"
                       f"{' (cached)' if r.get('cache_hit') else ''}.")
    return out + ([""] if out else [])


def heal_lines(iterations: list[dict]) -> list[str]:
    """Per healed candidate: every heal tried and the held-out calibration perplexity before/after."""
    out = []
    for it in iterations:
        h = it.get("heal")
        if h:
            ppl = h["holdout_ppl"]
            tried = ", ".join(f"{k} {v:.2f}" for k, v in ppl.items() if k not in ("teacher", "none"))
            out.append(f"Heal of -{it['k']} layers: kept {h['chosen']}; held-out calibration ppl unhealed "
                       f"{ppl['none']:.2f}, healed {tried} (unpruned {ppl['teacher']:.2f}; {h['fit_tokens']} "
                       f"fitting tokens, {h['seconds']:.0f} s).")
    return out + ([""] if out else [])


def evaluation_lines(manifest: dict) -> list[str]:
    """The evaluate stage's zero-shot table (recipe `evaluate:`), parent column first with paired CIs."""
    from edgeprune.report.quality import quality_table

    ev = manifest.get("evaluation")
    if not ev or not ev.get("records"):
        return []
    cfg = ev["config"]
    items = f"first {cfg['limit']} items each" if cfg["limit"] else "full sets"
    return ["", f"## Zero-shot tasks (evaluate stage: {', '.join(cfg['tasks'])}, {items}, lm-eval on the GGUF)",
            "", quality_table(ev["records"])]


def relative_budget_note(budget: dict, its: list[dict]) -> list[str]:
    """A latency_fraction budget is checked at the baseline's speed level, not on the table's latency."""
    if budget.get("latency_fraction") is None:
        return []
    at = ", ".join(f"{it['layers']} layers {it['latency_at_level_s']:.3f} s" for it in its if "latency_at_level_s" in it)
    return [f"Latency budget: {budget['latency_fraction']:g} x the unpruned model's latency measured in this run; "
            f"candidates are checked at the baseline's speed level through their paired benchmark "
            f"(latency / drift: {at or 'none paired'}), so the machine's drift since the baseline does not count."]


def render_report(manifest: dict, with_evaluation: bool = True) -> str:
    res = manifest["result"]
    budget = manifest["budget"]
    its = manifest["iterations"]
    first = its[0]
    need = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in budget.items() if v is not None)
    lines = [f"# edgeprune run — target `{manifest['plan']['target']['name']}`", "",
             f"**Verdict:** {'budget met' if res['met'] else 'budget NOT met'} — {res['reason']}.", "",
             f"Budget: {need}.", "",
             f"Model: `{manifest['inputs']['model']}` (sha256 {manifest['inputs']['model_sha256'][:12]}…), "
             f"depth method `{manifest['depth_scores']['method']}`, quant `{manifest['plan']['recipe']['export']['quant']}`.",
             "", iteration_table(its, budget), "",
             f"Perplexity: WikiText-2 test, {first['ppl']['windows']} non-overlapping windows of "
             f"{first['ppl']['ctx']} tokens ({first['ppl']['tokens_scored']} tokens scored), llama.cpp logits.",
             f"Benchmark: {first['bench']['n_prompt']}-token prompt, {first['bench']['n_gen']} generated tokens, "
             f"{first['bench']['repetitions']} repetitions after {first['bench']['warmup']} warm-up.",
             *how_measured_lines(its),
             f"Latency = prompt / pp tok/s + answer / tg tok/s (medians).",
             *relative_budget_note(budget, its),
             *([KLD_NOTE] if first.get("kld") else []), "",
             *heal_lines(its),
             *recovery_lines(its),
             f"Artifact: `{res['artifact']}`. Wall time {manifest['wall_time_s']} s. "
             f"Cache hits: {sum(s['cache_hit'] for s in manifest['steps'])}/{len(manifest['steps'])} steps."]
    if with_evaluation:
        lines += evaluation_lines(manifest)
    return "\n".join(lines) + "\n"


def llama_bench_records(manifest: dict) -> list[dict]:
    """bench.json in llama-bench's JSON shape (one record per test), one pair per iteration."""
    out = []
    for it in manifest["iterations"]:
        b = it["bench"]
        for test, key, n_p, n_g in (("pp", "pp_tps", b["n_prompt"], 0), ("tg", "tg_tps", 0, b["n_gen"])):
            out.append({"model_filename": it["gguf"].rsplit("/", 1)[-1], "model_size": it["gguf_bytes"],
                        "n_layer": it["layers"], "n_threads": b["n_threads"], "n_prompt": n_p, "n_gen": n_g,
                        "avg_ts": b[key]["mean"], "stddev_ts": b[key]["stdev"], "median_ts": b[key]["median"],
                        "samples_ts": b[key]["samples"], "cpu_info": b["host"].get("cpu_model"),
                        "peak_rss_bytes": b["peak_rss_bytes"], "k_removed": it["k"]} | HowMeasured.of(b).record())
    return out
