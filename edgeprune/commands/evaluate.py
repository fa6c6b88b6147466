"""`edgeprune eval` and `edgeprune compare`: perplexity, KLD vs a parent, zero-shot tasks, paired CIs."""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeprune.data import eval_text
from edgeprune.errors import ConfigError, DataError
from edgeprune.evaluation.metrics import paired_bootstrap
from edgeprune.stages.evaluate import check_windows
from edgeprune.stages.llama_perplexity import check_chunks, llama_kld, llama_perplexity
from edgeprune.stages.quality import compare_to_parent, model_perplexity
from edgeprune.toolchain.hf import resolve_model


@dataclass(frozen=True)
class PerplexityProtocol:
    """How `eval` measures perplexity (and KLD vs a parent): its up-front argument check and its two measures."""

    check: Callable[[int, int | None], None]
    measure: Callable[..., dict]  # (model, text, ctx, windows, threads)
    compare: Callable[..., dict]  # (model, parent, text, ctx, windows, threads)


PROTOCOLS = {"llama-perplexity": PerplexityProtocol(check_chunks, llama_perplexity, llama_kld),
             "windows": PerplexityProtocol(check_windows, model_perplexity, compare_to_parent)}


def default_protocol(path: Path) -> str:
    """llama.cpp's own protocol for a GGUF (numbers comparable with llama-perplexity's); the no-BOS windows of
    stages/quality.py for a HF folder, as before."""
    return "llama-perplexity" if path.suffix == ".gguf" else "windows"


def check_protocol(name: str | None) -> None:
    if name is None or name in PROTOCOLS:
        return
    close = difflib.get_close_matches(name, list(PROTOCOLS), n=1)
    raise ConfigError(f"unknown perplexity protocol '{name}'", where="--protocol",
                      fix=f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(PROTOCOLS)}")


def perplexity_record(path: Path, parent: str | None, body: str, ctx: int, windows: int | None,
                      threads: int | None, protocol: str) -> dict:
    spec = PROTOCOLS[protocol]
    if parent:
        rec = spec.compare(path, resolve_model(parent), body, ctx, windows, threads) | {"parent": str(parent)}
    else:
        rec = spec.measure(path, body, ctx, windows, threads)
    return {"protocol": protocol} | rec


def eval_command(model: str, tasks: str | None, limit: int | None, ppl: bool, parent: str | None,
                 text: str | None, ctx: int, windows: int | None, data_dir: str | None, threads: int | None,
                 label: str | None, backend: str = "llama.cpp", dtype: str = "bfloat16",
                 protocol: str | None = None) -> dict:
    """One JSON record: what was evaluated, on what, and the scores (per-item results included)."""
    from edgeprune.report.manifest import versions

    check_protocol(protocol)
    check_windows(ctx, windows)
    path = resolve_model(model)
    protocol = protocol or default_protocol(path)
    PROTOCOLS[protocol].check(ctx, windows)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}", where="--limit", fix="give a positive item count")
    record = {"schema": "edgeprune.eval/1", "model": str(path), "label": label or path.stem,
              "kind": "gguf" if path.suffix == ".gguf" else "hf", "versions": versions()}
    if ppl or parent or not tasks:
        t0 = time.time()
        body = eval_text(Path(text) if text else None)
        record["ppl"] = perplexity_record(path, parent, body, ctx, windows, threads, protocol)
        record["ppl"]["text"] = str(text or "WikiText-2 test (wiki.test.raw)")
        record["ppl"]["wall_s"] = round(time.time() - t0, 1)
    if tasks:
        from edgeprune.toolchain.lmeval import run_tasks

        t0 = time.time()
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        res = run_tasks(path, names, limit, Path(data_dir) if data_dir else None, threads, backend=backend, dtype=dtype)
        record["tasks"] = res | {"limit": limit, "wall_s": round(time.time() - t0, 1)}
    return record


def summary(record: dict) -> dict:
    """What the terminal shows: everything except per-item results."""
    out = {k: v for k, v in record.items() if k not in ("tasks", "versions")}
    if "tasks" in record:
        out["tasks"] = {k: v for k, v in record["tasks"].items() if k in ("scores", "n", "limit", "wall_s")}
    return out


def _load_eval(path: Path) -> dict:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read eval results ({type(exc).__name__})", where=str(path),
                        fix="give a JSON written by `edgeprune eval --out`") from None
    if not (isinstance(rec, dict) and isinstance(rec.get("tasks"), dict) and "items" in rec["tasks"]):
        raise DataError("no per-item task results in this file", where=str(path),
                        fix="rerun `edgeprune eval --tasks ... --out FILE`")
    return rec


def compare_items(a: dict, b: dict, metric: str = "acc", iters: int = 10000) -> dict:
    """Per task: b - a on the items both scored, with a paired bootstrap CI."""
    out = {}
    for task, items_a in a["tasks"]["items"].items():
        items_b = b["tasks"]["items"].get(task)
        if not items_b:
            continue
        ids = sorted(set(items_a) & set(items_b), key=int)
        ids = [i for i in ids if metric in items_a[i] and metric in items_b[i]]
        if ids:
            out[task] = paired_bootstrap([items_a[i][metric] for i in ids], [items_b[i][metric] for i in ids], iters)
    return out


def compare_command(a: str, b: str, metric: str, iters: int) -> dict:
    ra, rb = _load_eval(Path(a)), _load_eval(Path(b))
    res = compare_items(ra, rb, metric, iters)
    if not res:
        raise DataError(f"the two files share no scored items with metric '{metric}'", where=f"{a}, {b}",
                        fix="evaluate both models on the same tasks (and --limit)")
    return {"a": ra["label"], "b": rb["label"], "metric": metric, "tasks": res}
