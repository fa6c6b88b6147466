"""Resume a plan with the cost-model calibration it started with.

The planner's cost model learns from every measurement on a target (targets/calibration.py).
If a killed run had written its measurements to the target's shared calibration file, the
rerun would start with more knowledge than the first attempt had and could choose a different
candidate, so a kill would change the artifact. Instead a run works on a private copy in --out:
`.calibration-start.json` is the shared file as the run first saw it (kept across kills),
`.calibration-run.json` is rebuilt from it on every (re)start and takes this run's samples.
Only a finished run merges its new samples into the shared file and drops both copies.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.atomic import atomic_write_text
from edgeprune.targets import calibration as cal

START, WORK = ".calibration-start.json", ".calibration-run.json"


def run_calibration_path(out: Path, shared: Path) -> Path:
    start, work = out / START, out / WORK
    if not start.is_file():
        atomic_write_text(start, shared.read_text() if shared.is_file() else json.dumps({"samples": []}))
    atomic_write_text(work, start.read_text())
    return work


def _plain(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k != "time"}


def merge_run_calibration(out: Path, shared: Path) -> int:
    """Add this run's new samples to the shared file; returns how many."""
    start, work = out / START, out / WORK
    if not work.is_file():
        return 0
    data, seen = cal.load(work), [_plain(s) for s in cal.load(start)["samples"]]
    new = [_plain(s) for s in data["samples"] if _plain(s) not in seen]
    for sample in new:
        cal.add_sample(shared, data.get("fingerprint"), sample)
    return len(new)


def clear_run_calibration(out: Path) -> None:
    for name in (START, WORK):
        (out / name).unlink(missing_ok=True)
