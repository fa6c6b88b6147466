"""Benchmark regression check: a new bench JSON against a baseline, within a tolerance.

Pure: no I/O. Speeds (tok/s) must not drop, peak RAM and file size must not grow, by more than
the tolerance. Used by `edgeprune bench --compare baseline.json --tolerance 5%` and CI.
"""

from __future__ import annotations

from edgeprune.errors import ConfigError

# (name, how to read it from a bench JSON, True when higher is better)
METRICS = (
    ("tg_tps", lambda b: b["tg_tps"]["median"], True),
    ("pp_tps", lambda b: b["pp_tps"]["median"], True),
    ("peak_rss_bytes", lambda b: b.get("peak_rss_bytes"), False),
    ("model_bytes", lambda b: b.get("model_bytes"), False),
)


def parse_tolerance(text: str | float) -> float:
    """'5%' or '0.05' -> 0.05."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"tolerance must look like 5% or 0.05, got {raw!r}", where="--tolerance",
                          fix="write e.g. --tolerance 5%") from None
    if not 0 <= value < 1:
        raise ConfigError(f"tolerance must be in [0 %, 100 %), got {raw!r}", where="--tolerance",
                          fix="write e.g. --tolerance 5%")
    return value


def compare(current: dict, baseline: dict, tolerance: float) -> list[dict]:
    """One row per metric both sides have: values, change in %, and whether it regressed."""
    rows = []
    for name, read, higher_better in METRICS:
        try:
            new, old = read(current), read(baseline)
        except (KeyError, TypeError):
            continue
        if not new or not old:
            continue
        change = (new - old) / old
        regressed = change < -tolerance if higher_better else change > tolerance
        rows.append({"metric": name, "baseline": old, "current": new, "change_pct": round(100 * change, 2),
                     "limit_pct": round(100 * (-tolerance if higher_better else tolerance), 2),
                     "regressed": regressed})
    return rows


def render(rows: list[dict]) -> str:
    lines = [f"{'metric':16} {'baseline':>14} {'current':>14} {'change':>9}  verdict"]
    for r in rows:
        verdict = f"REGRESSION (limit {r['limit_pct']:+.1f} %)" if r["regressed"] else "ok"
        lines.append(f"{r['metric']:16} {r['baseline']:>14.4g} {r['current']:>14.4g} {r['change_pct']:>+8.2f}%  {verdict}")
    return "\n".join(lines)
