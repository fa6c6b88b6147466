"""Perplexity of a GGUF with llama.cpp, on a stated protocol (computed by stages/quality.py).

Protocol: the text is tokenized whole (no BOS); cut into non-overlapping windows of `ctx`
tokens; within each window every token after the first is scored from its in-window prefix.
ppl = exp(mean NLL over all scored tokens). `windows` limits how many windows are used (the
first ones, so two models always see the same tokens).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeprune.config.evaluate import Evaluate
from edgeprune.errors import ConfigError
from edgeprune.evaluation.metrics import token_nll
from edgeprune.report.records import Measurement
from edgeprune.store import StepStore
from edgeprune.stages.quality import model_perplexity


def window_nll(logits: np.ndarray, tokens: list[int]) -> tuple[float, int]:
    """Sum of -log p(t_i | t_<i) for i >= 1 and the count scored (evaluation.metrics.token_nll)."""
    terms = token_nll(logits, tokens)
    return float(terms.sum()), terms.size


def check_windows(ctx: int, windows: int | None, where: str = "--ctx") -> None:
    """A window scores ctx - 1 tokens, so ctx >= 2; a window count, when given, is >= 1. Checked
    before the model loads: llama.cpp reads n_ctx=0 as "the model's own" and a negative count
    scored nothing (a division by zero)."""
    if ctx < 2:
        raise ConfigError(f"the perplexity window must be at least 2 tokens, got {ctx}", where=where,
                          fix="e.g. --ctx 512 (a window scores every token after its first)")
    if windows is not None and windows < 1:
        raise ConfigError(f"the number of windows must be >= 1, got {windows}", where="--windows",
                          fix="give a positive count, or leave --windows out to use the whole text")


def gguf_perplexity(gguf: Path, text: str, ctx: int, windows: int | None, threads: int | None = None) -> dict:
    """The planner's perplexity of a GGUF: stages/quality.model_perplexity, with the recipe's knobs
    named in a too-short-text error."""
    check_windows(ctx, windows)
    return model_perplexity(gguf, text, ctx, windows, threads, fix="give a longer text or a smaller quality.ctx")


def evaluate_ppl(store: StepStore, gguf: Path, gguf_key: str, text: str, text_hash: str, ctx: int,
                 windows: int | None, threads: int | None = None) -> dict:
    """`threads` changes only the speed (not part of the key): the planner passes the target's."""
    key = {"gguf": gguf_key, "text": text_hash, "ctx": ctx, "windows": windows}
    return store.run("ppl", key, lambda out: gguf_perplexity(gguf, text, ctx, windows, threads)).meta


KLD_KEYS = ("kld_mean", "kld_median", "kld_p99", "kld_max", "top1_agree", "positions", "parent_ppl",
            "parent_tokenizer_mismatches")


def evaluate_kld(store: StepStore, gguf: Path, gguf_key: str, parent: Path, parent_hash: str, text: str,
                 text_hash: str, ctx: int, windows: int | None, threads: int | None = None) -> dict:
    """KL(parent || GGUF) of next-token distributions on the ppl windows (stages/quality.py's protocol).

    The parent is the unpruned HF checkpoint, so the baseline row shows what quantizing alone costs and
    every other row what pruning (+ recovery) + quantizing cost; cached like the ppl step."""
    from edgeprune.stages.quality import compare_to_parent

    key = {"gguf": gguf_key, "parent": parent_hash, "text": text_hash, "ctx": ctx, "windows": windows}

    def build(out: Path) -> dict:
        res = compare_to_parent(gguf, parent, text, ctx, windows, threads)
        return {k: res[k] for k in KLD_KEYS}

    return store.run("kld", key, build).meta


def check_tasks(cfg: Evaluate) -> None:
    """Unknown task names fail when the plan is built, not after an hour of search."""
    from edgeprune.toolchain.lmeval import check_task_names, task_manager

    check_task_names(cfg.tasks, task_manager(cfg.data_dir))


def task_record(store: StepStore, gguf: Path, gguf_key: str, cfg: Evaluate, threads: int | None,
                label: str) -> dict:
    """One `edgeprune eval`-shaped record (schema edgeprune.eval/1) of lm-eval tasks on a GGUF, cached."""
    from importlib.metadata import version

    from edgeprune.toolchain.lmeval import run_tasks

    key = {"gguf": gguf_key, "tasks": cfg.tasks, "limit": cfg.limit, "data": str(cfg.data_dir or ""),
           "lm_eval": version("lm-eval")}

    def build(out: Path) -> dict:
        t0 = time.perf_counter()
        res = run_tasks(gguf, cfg.tasks, cfg.limit, cfg.data_dir, threads)
        return res | {"limit": cfg.limit, "wall_s": round(time.perf_counter() - t0, 1)}

    tasks = store.run("tasks", key, build).meta
    return {"schema": "edgeprune.eval/1", "label": label, "model": str(gguf), "kind": "gguf", "tasks": tasks}


def evaluate_delivered(store: StepStore, baseline: Measurement, delivered: Measurement, cfg: Evaluate,
                       threads: int | None = None) -> dict:
    """The planner's evaluate stage: `cfg.tasks` on the delivered iteration's GGUF and, with
    compare_parent, on the unpruned baseline's (same items, for paired CIs in the report)."""
    rows = [(delivered, f"delivered (-{delivered.k} layers, {delivered.quant})", None)]
    if cfg.compare_parent and delivered is not baseline:
        rows.insert(0, (baseline, f"unpruned ({baseline.quant})", "parent"))
    records = []
    for m, label, role in rows:
        rec = task_record(store, Path(m.gguf), m.gguf_key, cfg, threads, label)
        rec["ppl"] = m.ppl | (m.kld or {})
        records.append(rec | ({"role": role} if role else {}))
    return {"config": cfg.model_dump(mode="json"), "records": records}
