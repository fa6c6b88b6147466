"""`edgeprune report RUN_DIR`: plots, report.md, a self-contained report.html and the model card.

Inputs: RUN_DIR/manifest.json (written by `plan`; its `evaluation` records when the recipe has an
`evaluate:` section) and, when present, RUN_DIR/eval/*.json records written by
`edgeprune eval --out RUN_DIR/eval/NAME.json` (quality table, MMLU subfield bars).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from edgeprune.errors import DataError
from edgeprune.report import plots
from edgeprune.report.card import chosen_iteration, render_card
from edgeprune.atomic import atomic_write_text
from edgeprune.report.markdown import render_report
from edgeprune.report.quality import find_parent, load_eval_records, quality_table


def load_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise DataError("no manifest.json (not a finished run)", where=str(run_dir),
                        fix="give the --out folder of a finished `edgeprune plan` run")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError("manifest.json is not valid JSON", where=str(path), fix="rerun the plan") from None
    if not manifest.get("iterations"):
        raise DataError("manifest has no measured iterations", where=str(path), fix="rerun the plan")
    return manifest


def make_plots(manifest: dict, records: list[dict], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    removed = chosen_iteration(manifest).get("removed_layers", [])
    made = [plots.importance_plot(manifest["depth_scores"]["per_layer"], removed,
                                  manifest["depth_scores"]["method"], folder / "importance.png"),
            plots.depth_plot(manifest["iterations"], manifest["budget"], folder / "quality_latency_vs_depth.png",
                             accuracy_by_k(manifest, records)),
            plots.speed_size_plot(manifest["iterations"], manifest["budget"], folder / "speed_vs_size.png"),
            plots.mmlu_subfield_plot(records, folder / "mmlu_subfields.png"),
            plots.front_plot(manifest.get("search", []), manifest["iterations"], manifest["budget"],
                             folder / "pareto_front.png")]
    return [p for p in made if p is not None]


def accuracy_by_k(manifest: dict, records: list[dict]) -> dict[int, float]:
    """Mean task accuracy of eval records whose model is one of the run's iterations' GGUFs."""
    by_gguf = {Path(it["gguf"]).name: it["k"] for it in manifest["iterations"]}
    if manifest["result"].get("artifact") is not None and manifest["result"].get("chosen_k") is not None:
        by_gguf[manifest["result"]["artifact"]] = manifest["result"]["chosen_k"]
    out = {}
    for r in records:
        k = by_gguf.get(Path(r["model"]).name)
        accs = [s["acc"] for t, s in r.get("tasks", {}).get("scores", {}).items() if "acc" in s]
        if k is not None and accs:
            out[k] = sum(accs) / len(accs)
    return out


def render_markdown(manifest: dict, quality_md: str, plot_paths: list[str]) -> str:
    plan = manifest["plan"]
    steps = "\n".join(f"{i}. {s}" for i, s in enumerate(plan.get("steps", []), 1))
    checks = chosen_iteration(manifest)["checks"]
    budget_rows = "\n".join(f"| {name} | {c['required']} | {c['measured']:.4g} | {'met' if c['met'] else 'MISSED'} |"
                            for name, c in checks.items())
    parts = [render_report(manifest, with_evaluation=False), "## Plan", "", steps or "(no steps recorded)", "",
             "## Budget vs measured (delivered iteration)", "", "| check | required | measured | |",
             "|---|---|---|---|", budget_rows, ""]
    if quality_md:
        parts += ["## Quality vs parent", "", quality_md, ""]
    parts += ["## Plots", ""] + [f"![{Path(p).stem}]({p})\n" for p in plot_paths]
    return "\n".join(parts) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_to_html(md: str, base: Path, title: str) -> str:
    """The small markdown subset our reports use; images become base64 data URIs (one file to share)."""
    out, table = [], []

    def flush_table():
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|(\s*-+\s*\|)+", r.replace(" ", ""))]
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        img = re.fullmatch(r"!\[(.*?)\]\((.+?)\)", line.strip())
        if img:
            data = base64.b64encode((base / img.group(2)).read_bytes()).decode()
            out.append(f'<figure><img alt="{html.escape(img.group(1))}" src="data:image/png;base64,{data}"/></figure>')
        elif m := re.match(r"(#+) (.*)", line):
            out.append(f"<h{len(m.group(1))}>{_inline(m.group(2))}</h{len(m.group(1))}>")
        elif m := re.match(r"(\d+\.|-) (.*)", line):
            out.append(f"<p class='li'>{_inline(line)}</p>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .5em;font-size:.9em}img{max-width:100%}.li{margin:.2em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(out)}</body></html>\n")


def build_report(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    eval_dir = run_dir / "eval"
    records = load_eval_records(eval_dir) if eval_dir.is_dir() else []
    # the plan's own evaluate stage (recipe `evaluate:`), unless the same GGUF was also evaluated by hand
    seen = {r["model"] for r in records}
    records += [r for r in (manifest.get("evaluation") or {}).get("records", []) if r["model"] not in seen]
    parent = find_parent(records)
    records = ([parent] if parent else []) + [r for r in records if r is not parent]
    pngs = [p.relative_to(run_dir).as_posix() for p in make_plots(manifest, records, run_dir / "plots")]
    quality_md = quality_table(records)
    md = render_markdown(manifest, quality_md, pngs)
    atomic_write_text(run_dir / "report.md", md)
    atomic_write_text(run_dir / "report.html", markdown_to_html(md, run_dir, f"edgeprune run {run_dir.name}"))
    atomic_write_text(run_dir / "README.md", render_card(manifest, quality_md, pngs))
    return [run_dir / "report.md", run_dir / "report.html", run_dir / "README.md", *(run_dir / p for p in pngs)]
