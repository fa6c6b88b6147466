"""The local benchmark worker and the GGUF perplexity protocol, on the tiny model."""

import math
import resource

import numpy as np
import pytest

from edgeprune.config.recipe import Export
from edgeprune.config.target import Budget
from edgeprune.devices import BenchSpec, get_runner
from edgeprune.store import StepStore
from edgeprune.stages.bench import check_budget, latency_s
from edgeprune.stages.evaluate import gguf_perplexity, window_nll
from edgeprune.stages.export import export_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    gguf, _ = export_gguf(StepStore(tmp_path_factory.mktemp("st")), tiny_llama, "tiny", Export())
    return gguf


def test_window_nll_matches_hand_computation():
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]))
    tokens = [0, 1, 2]  # scored: p(1 | 0) = 0.25, p(2 | 0 1) = 0.1; the last row predicts nothing
    nll, n = window_nll(logits, tokens)
    assert n == 2 and nll == pytest.approx(-math.log(0.25) - math.log(0.1))


def test_local_runner_measures_in_a_separate_process(tiny_gguf, monkeypatch):
    from edgeprune.devices import runners

    monkeypatch.setattr(runners, "check_spread", lambda result, where: result)  # plumbing, not timing
    res = get_runner("local")(tiny_gguf, BenchSpec(prompt_tokens=16, gen_tokens=8, repetitions=2, warmup=1))
    assert res["measured"] and res["runner"] == "local"
    assert len(res["pp_tps"]["samples"]) == 2 and len(res["tg_tps"]["samples"]) == 2
    assert res["pp_tps"]["median"] > 0 and res["tg_tps"]["median"] > 0
    assert res["model_bytes"] == tiny_gguf.stat().st_size
    # the worker's own peak, not this (torch-laden) process's, which Linux would carry across exec
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert res["model_bytes"] < res["peak_rss_bytes"] < parent_peak
    assert res["host"]["cores"] >= 1 and res["host"]["cpu_model"]


def test_latency_and_budget_checks():
    bench = {"pp_tps": {"median": 640.0}, "tg_tps": {"median": 50.0}, "peak_rss_bytes": 3e9, "model_bytes": 1e9}
    budget = Budget(prompt_tokens=64, answer_tokens=100, latency_s=2.0, decode_tps=60, max_ram_gb=2.0)
    assert latency_s(bench, budget) == pytest.approx(0.1 + 2.0)
    checks = check_budget(bench, budget)
    assert not checks["latency_s"]["met"] and not checks["decode_tps"]["met"] and not checks["peak_ram_gb"]["met"]
    assert checks["peak_ram_gb"]["measured"] == pytest.approx(3.0)


def test_gguf_perplexity_protocol(tiny_gguf):
    text = "The quick brown fox jumps over the lazy dog. " * 40
    res = gguf_perplexity(tiny_gguf, text, ctx=64, windows=3)
    assert res["windows"] == 3 and res["tokens_scored"] == 3 * 63
    # a random model is near-uniform over the 49152-token vocabulary, never better than ~1/10 of it
    assert 5000 < res["ppl"] < 49152 * 3
