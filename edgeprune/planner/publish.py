"""Write a run's outputs into --out: GGUF (only when the budget is met), manifest, bench, report."""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from edgeprune.atomic import atomic_copy, atomic_write_text
from edgeprune.errors import ConfigError
from edgeprune.report.manifest import build_manifest, write_json
from edgeprune.report.markdown import llama_bench_records, render_report
from edgeprune.store.disk import check_free_space, check_writable_dir


def safe_name(stem: str) -> str:
    """A file name that stays inside --out whatever the model was called."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-")
    return cleaned or "model"


def prepare_out(out: Path) -> None:
    check_writable_dir(out, "--out")


@contextmanager
def out_lock(out: Path):
    """One plan per output dir: a second run fails at once instead of interleaving files.
    The lock file is removed on the way out, success or failure, so --out keeps only results."""
    path = out / ".lock"
    fh = open(path, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fh.fileno()).st_ino != os.stat(path).st_ino:  # locked a file a finishing run just removed
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        fh.close()
        raise ConfigError("another edgeprune run holds this output dir", where=str(out),
                          fix="wait for it to finish or choose another --out") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiting run then finds no stale file
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def artifact_name(state) -> str:
    final = state.outcome.final.measured
    stem = safe_name(Path(str(state.plan.model)).stem.split(".")[0])
    return f"{stem}-L{final.layers}.{final.quant}.gguf"


def front_section(manifest: dict, out: Path) -> str:
    """The Pareto-front plot under --out/plots and its link for report.md (`edgeprune report` adds the rest)."""
    from edgeprune.report.plots import front_plot

    (out / "plots").mkdir(exist_ok=True)
    png = front_plot(manifest["search"], manifest["iterations"], manifest["budget"], out / "plots" / "pareto_front.png")
    return "\n![pareto_front](plots/pareto_front.png)\n" if png else ""


def publish(state, started: float) -> dict:
    out = state.plan.out
    artifact = None
    if state.outcome.met:
        artifact = out / artifact_name(state)
        src = Path(state.outcome.final.measured.gguf)
        check_free_space(out, src.stat().st_size, "the final GGUF")
        atomic_copy(src, artifact)
    manifest = build_manifest(state, state.model_hash, time.time() - started, artifact)
    write_json(out / "bench.json", {"records": llama_bench_records(manifest)})
    atomic_write_text(out / "report.md", render_report(manifest) + front_section(manifest, out))
    write_json(out / "manifest.json", manifest)  # last: its presence marks a complete run
    return manifest
