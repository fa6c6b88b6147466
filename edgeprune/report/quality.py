"""Quality tables from `edgeprune eval --out` records: scores per model, and differences vs the parent
with paired bootstrap CIs on the items both models scored."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.errors import DataError
from edgeprune.evaluation.metrics import paired_bootstrap


def load_eval_records(folder: Path) -> list[dict]:
    """RUN_DIR/eval/*.json, in name order; unreadable files are an error, not silently skipped."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise DataError("eval record is not valid JSON", where=str(path),
                            fix="rerun `edgeprune eval --out` for it or remove it") from None
        if rec.get("schema") != "edgeprune.eval/1":
            raise DataError(f"not an edgeprune eval record (schema {rec.get('schema')!r})", where=str(path),
                            fix="write it with `edgeprune eval --out`")
        records.append(rec)
    return records


def find_parent(records: list[dict]) -> dict | None:
    """The record another one was compared to (--parent), else the one with role or label 'parent'."""
    referenced = {r.get("ppl", {}).get("parent") for r in records} - {None}
    for r in records:
        if r["model"] in referenced:
            return r
    return next((r for r in records if r.get("role") == "parent" or r.get("label") == "parent"), None)


def _metric_rows(records: list[dict]) -> list[tuple[str, str, str]]:
    rows = []
    seen = set()
    for r in records:
        for task, scores in r.get("tasks", {}).get("scores", {}).items():
            for metric in ("acc", "acc_norm", "perplexity"):
                if metric in scores and (task, metric) not in seen:
                    seen.add((task, metric))
                    rows.append((task, metric, f"{task} {metric}"))
    return rows


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if metric in ("ppl", "perplexity") else (f"{v:.4f}" if metric == "kld" else f"{100 * v:.1f}")


def _diff(parent: dict, rec: dict, task: str, metric: str) -> str:
    a = parent.get("tasks", {}).get("items", {}).get(task, {})
    b = rec.get("tasks", {}).get("items", {}).get(task, {})
    ids = [i for i in a if i in b and metric in a[i] and metric in b[i]]
    if not ids:
        return ""
    r = paired_bootstrap([a[i][metric] for i in ids], [b[i][metric] for i in ids], iters=2000)
    return f" ({100 * r['diff']:+.1f} [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}])"


def quality_table(records: list[dict]) -> str:
    """Markdown: one column per model; accuracies in %, with Δ vs parent and its 95% CI."""
    if not records:
        return ""
    parent = find_parent(records)
    if parent is not None:  # parent first: the differences read left to right
        records = [parent] + [r for r in records if r is not parent]
    head = "| metric | " + " | ".join(r["label"] for r in records) + " |"
    lines = [head, "|---" * (len(records) + 1) + "|"]
    if any("ppl" in r for r in records):
        lines.append("| WikiText-2 ppl | " + " | ".join(_fmt(r.get("ppl", {}).get("ppl"), "ppl") for r in records)
                     + " |")
        lines.append("| KLD vs parent (nats) | " + " | ".join(_fmt(r.get("ppl", {}).get("kld_mean"), "kld")
                                                          for r in records) + " |")
    for task, metric, name in _metric_rows(records):
        cells = []
        for r in records:
            v = r.get("tasks", {}).get("scores", {}).get(task, {}).get(metric)
            extra = _diff(parent, r, task, metric) if parent and r is not parent and metric != "perplexity" else ""
            cells.append(_fmt(v, metric) + extra)
        n = next((r["tasks"]["n"][task] for r in records if task in r.get("tasks", {}).get("n", {})), None)
        lines.append(f"| {name}{f' (n={n})' if n else ''} | " + " | ".join(cells) + " |")
    n = {r["label"]: r.get("tasks", {}).get("limit") for r in records}
    note = (f"Accuracies in %; in brackets: difference vs `{parent['label']}` on the same items with a 95% paired "
            "bootstrap CI." if parent else "Accuracies in %.")
    if any(v for v in n.values()):
        note += " Items per task limited with --limit (n = items scored): not full sets."
    return "\n".join(lines) + "\n\n" + note
