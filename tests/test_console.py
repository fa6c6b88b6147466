"""What a run prints: one line per step, other libraries quiet unless --verbose, the closing summary;
and a failed run leaves no run folder behind."""

from __future__ import annotations

import io
import types
import warnings

import pytest

from edgeprune.report.console import Console, libraries_quiet, summary_lines


def _it(k, layers, tg, latency, ppl, paired=None, at_level=None, removed=()):
    it = {"k": k, "layers": layers, "quant": "Q4_K_M", "removed_layers": list(removed), "candidate": {},
          "gguf_bytes": 84_000_000, "latency_s": latency, "ppl": {"ppl": ppl},
          "bench": {"tg_tps": {"median": tg}, "paired": paired},
          "verify": {"hf_vs_f16": {"cos_min": 0.99999}, "quant_vs_f16": {"kld_mean": 0.0871}}}
    if at_level is not None:
        it["latency_at_level_s"] = at_level
    return it


def manifest(met=True):
    base = _it(0, 30, 60.0, 1.400, 17.0)
    cand = _it(5, 25, 66.0, 1.250, 40.8, paired={"tg_ratio": {"median": 1.214}}, at_level=1.150,
               removed=(20, 14, 17, 23, 25))
    return {"iterations": [base, cand], "budget": {"max_ppl_ratio": 4.0},
            "depth_scores": {"method": "block-influence"},
            "result": {"met": met, "reason": "why", "iteration": 1 if met else None,
                       "artifact": "SmolLM2-L25.Q4_K_M.gguf" if met else None}}


def test_summary_says_what_was_removed_the_speedup_quality_and_where(tmp_path):
    lines = summary_lines(manifest(), tmp_path)
    assert lines == [
        "budget met: why",
        "removed:  5 of 30 layers (14, 17, 20, 23, 25; by block-influence); quantized Q4_K_M",
        # at the baseline's level: 1.400 / 1.150 (the paired latency), not 1.400 / 1.250 (the drifted minute)
        "speed:    x1.22 answer latency (1.400 s -> 1.150 s), x1.21 decode tok/s vs the unpruned Q4_K_M "
        "(paired with the baseline in one process)",
        "quality:  WikiText-2 perplexity 17.00 -> 40.80 (x2.40, +140 %; floor x4)",
        f"GGUF:     {tmp_path}/SmolLM2-L25.Q4_K_M.gguf (84.0 MB, Q4_K_M; verified: F16 vs HF logits cos >= 0.999990"
        ", Q4_K_M vs F16 mean KL 0.0871)",
        f"report:   {tmp_path}/report.md (manifest.json, bench.json beside it)"]


def test_summary_of_a_missed_budget_names_the_closest_and_publishes_nothing(tmp_path):
    m = manifest(met=False)
    further = dict(m["iterations"][1], k=2, removed_layers=[14, 17])  # measured last, but further off
    m["iterations"][1]["checks"] = {"latency_s": {"measured": 1.15, "required": 1.12, "kind": "max", "met": False}}
    further["checks"] = {"latency_s": {"measured": 1.30, "required": 1.12, "kind": "max", "met": False}}
    m["iterations"].append(further)
    lines = summary_lines(m, tmp_path)
    assert lines[0] == "budget NOT met: why"
    assert lines[1].startswith("removed:  closest measured: 5 of 30 layers")
    assert "GGUF:     none published (the budget was not met)" in lines


def test_one_line_per_step_with_its_time():
    out = io.StringIO()
    c = Console(stream=out)
    c.say("search: -5L Q4_K_M")
    c.echo("built: export (export-3f2a) in 20.1s")  # the store's detail: --verbose only
    for name, hit, secs in (("export", False, 20.14), ("bench", True, 0.0)):
        c.started(name)
        c.finished(types.SimpleNamespace(name=name, hit=hit, seconds=secs))
    assert out.getvalue() == "search: -5L Q4_K_M\n  export GGUF        20.1 s\n  benchmark        cached\n"
    loud = io.StringIO()
    Console(verbose=True, stream=loud).echo("built: export (export-3f2a) in 20.1s")
    assert loud.getvalue() == "built: export (export-3f2a) in 20.1s\n"


def test_other_libraries_bars_and_warnings_hidden_then_restored():
    from tqdm import std
    from tqdm.auto import tqdm as auto_tqdm

    before = vars(std.tqdm)["__init__"]
    with libraries_quiet():
        bar = auto_tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")  # as transformers does
        assert bar.disable
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("a library's advice")  # noqa: B028
        assert seen == []
    assert vars(std.tqdm)["__init__"] is before
    assert not auto_tqdm(range(3), disable=False, file=io.StringIO()).disable


def test_our_bars_stay_but_are_transient():
    ns = {"__name__": "edgeprune.stages.fake"}
    exec("from tqdm import tqdm\ndef bar(f): return tqdm(range(2), desc='score', file=f)", ns)
    with libraries_quiet():
        ours = ns["bar"](io.StringIO())
    assert not ours.disable and ours.leave is False


def test_failed_run_removes_the_run_folder_it_created(tmp_path, monkeypatch):
    from edgeprune.errors import DataError
    from edgeprune.planner import run as run_mod

    def fail(plan, steps, log=print):
        raise DataError("file not found: x", where="--calib")

    monkeypatch.setattr(run_mod, "execute", fail)
    monkeypatch.setattr(run_mod, "check_runner_arch", lambda *a: None, raising=False)
    device = types.SimpleNamespace(runner="local")
    plan = types.SimpleNamespace(out=tmp_path / "runs" / "host-1", target=types.SimpleNamespace(device=device))
    with pytest.raises(DataError):
        run_mod.run_plan(plan, str(tmp_path / "store"), False, log=lambda s: None)
    assert not plan.out.exists() and not plan.out.parent.exists()  # runs/ too: this run created it
    kept = tmp_path / "mine"  # a folder the user made is never removed
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        run_mod.run_plan(types.SimpleNamespace(out=kept, target=plan.target), str(tmp_path / "store"), False,
                         log=lambda s: None)
    assert (kept / "notes.txt").read_text() == "mine"


def test_verdict_names_the_delivered_model_and_its_numbers():
    """report.md opened with "Verdict: budget met — budget met."; the reason now says what met it."""
    from edgeprune.planner.execute import met_reason

    it = types.SimpleNamespace(
        measured=types.SimpleNamespace(k=5, quant="Q4_K_M"), ppl_ratio=2.4,
        checks={"latency_s": {"measured": 1.15, "required": 1.19, "kind": "max", "met": True},
                "peak_ram_gb": {"measured": 0.16, "required": 4.0, "kind": "max", "met": True}})
    assert met_reason(it, types.SimpleNamespace(max_ppl_ratio=4.0)) == (
        "-5 layers, Q4_K_M meets every constraint (latency_s 1.15 <= 1.19; peak_ram_gb 0.16 <= 4; "
        "ppl ratio 2.400 <= 4)")
