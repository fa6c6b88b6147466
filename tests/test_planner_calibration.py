"""Per-quant-type calibration, load drift between runs, and the Pareto-front plot (no model needed)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from edgeprune.planner import drift
from edgeprune.targets.calibration import fit, relevel, sample_from
from edgeprune.targets.costmodel import Candidate, DeviceSpec, Factors, predict
from edgeprune.targets.gguf_size import ModelShape

SMOL = ModelShape(hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, ffn=1536, vocab=49152, tied=True)
DEV = DeviceSpec(10.0, 25.0, 1)
# a synthetic device: Q4_0's kernels use the bandwidth 20 % better than Q4_K_M's, and prefill 2x
TRUTH = {"Q4_K_M": (1.8, 1.3), "Q4_0": (1.5, 0.65)}


def measure(c: Candidate, level: float = 1.0) -> tuple:
    """What the synthetic device would measure for `c`; `level` > 1: the machine is that much slower."""
    p = predict(SMOL, c, DEV, Factors(), 64, 100)
    bw, comp = TRUTH[c.quant]
    tg = 1 / (level * (bw * p.features["decode"][0] + 0.9 * p.features["decode"][1]))
    pp = 1 / (level * (comp * p.features["prefill"][0] + 1.1 * p.features["prefill"][1]))
    bench = {"tg_tps": {"median": tg}, "pp_tps": {"median": pp}, "peak_rss_bytes": 2e8}
    return sample_from(p, bench, c.label(SMOL), "local", c.quant), tg, pp


def test_two_quant_types_each_predicted_within_1_percent():
    cands = [Candidate(0, quant="Q4_K_M"), Candidate(3, quant="Q4_0")]
    f = fit([measure(c)[0] for c in cands])
    assert set(f.decode_quant) == {"Q4_K_M", "Q4_0"}
    for c in cands + [Candidate(8, quant="Q4_0"), Candidate(8, quant="Q4_K_M")]:  # other depths too
        _, tg, pp = measure(c)
        p = predict(SMOL, c, DEV, f, 64, 100)
        assert p.tg_tps == pytest.approx(tg, rel=0.01) and p.pp_tps == pytest.approx(pp, rel=0.01), c
    # one device-wide efficiency (the earlier model) cannot: it misses at least one type by > 5 %
    pooled = Factors(decode=f.decode, prefill=f.prefill, samples=2)
    errs = [abs(predict(SMOL, c, DEV, pooled, 64, 100).tg_tps / measure(c)[1] - 1) for c in cands]
    assert max(errs) > 0.05


def test_unmeasured_type_falls_back_to_the_mean_of_measured_types():
    f = fit([measure(c)[0] for c in (Candidate(0, quant="Q4_K_M"), Candidate(3, quant="Q4_0"))])
    geo = math.sqrt(f.decode_quant["Q4_K_M"] * f.decode_quant["Q4_0"])
    assert "Q5_K_M" not in f.decode_quant
    assert f.decode_theta("Q5_K_M") == pytest.approx((geo, f.decode[1]))
    assert min(f.decode_quant.values()) < f.decode_theta("Q5_K_M")[0] < max(f.decode_quant.values())
    # with no sample at all, every type gets the uncalibrated prior
    assert fit([]).decode_theta("Q5_K_M") == Factors().decode


def test_relevel_carries_type_ratios_from_history_to_a_slower_run():
    history = fit([measure(c)[0] for c in (Candidate(0, quant="Q4_K_M"), Candidate(3, quant="Q4_0"))])
    run = fit([measure(Candidate(0, quant="Q4_K_M"), level=1.6)[0]])  # this run: machine 1.6x slower
    f = relevel(history, run)
    c = Candidate(5, quant="Q4_0")
    _, tg, pp = measure(c, level=1.6)
    assert predict(SMOL, c, DEV, f, 64, 100).tg_tps == pytest.approx(tg, rel=0.02)
    assert predict(SMOL, c, DEV, f, 64, 100).pp_tps == pytest.approx(pp, rel=0.02)
    # without the history, Q4_0 takes Q4_K_M's efficiency and is predicted > 10 % too slow
    assert predict(SMOL, c, DEV, run, 64, 100).tg_tps < 0.9 * tg
    assert f.samples == 3 and relevel(Factors(), run) is run


def test_stale_reason_age_load_and_session():
    now = 10_000.0
    fresh = {"measured_at": now - 60, "loadavg": 0.3}
    assert drift.stale_reason(fresh, "local", 1, now, 0.8, 2, None) is None  # free cores both times
    assert "min ago" in drift.stale_reason({"measured_at": now - 3600, "loadavg": 0.3}, "local", 1, now, 0.3, 2, None)
    heavy = {"measured_at": now - 60, "loadavg": 12.0}
    assert "load average 12.0" in drift.stale_reason(heavy, "local", 1, now, 2.0, 2, None)
    assert drift.stale_reason({"measured_at": now - 60, "loadavg": 11.0}, "local", 1, now, 11.5, 2, None) is None
    assert drift.stale_reason(heavy, "ssh", 1, now, 2.0, 2, None) is None  # remote: this host's load is no signal
    assert drift.stale_reason({}, "local", 1, now, 0.0, 2, None) == "cached without a measurement time"
    assert drift.stale_reason({}, "fake", 1, now, 0.0, 2, None) is None
    # measured by this very run before a kill: kept whatever its age, so a resume decides the same
    assert drift.stale_reason({"measured_at": now - 3600, "loadavg": 12.0}, "local", 1, now, 0.0, 2, now - 4000) is None


def test_fresh_benchmark_remeasures_a_stale_cached_baseline_once(tmp_path, monkeypatch):
    from edgeprune.config.target import Target
    from edgeprune.runner import StepStore
    from edgeprune.stages import bench as bench_stage
    from edgeprune.targets import load_target

    calls = []

    def runner(gguf, spec):
        calls.append(spec)
        v = {"median": 50.0 + len(calls), "samples": [50.0]}
        return {"tg_tps": v, "pp_tps": v, "peak_rss_bytes": 1, "model_bytes": 1}

    monkeypatch.setattr(bench_stage, "get_runner", lambda name, device=None: runner)
    monkeypatch.setattr(drift.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(bench_stage.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    target: Target = load_target("host", {"device.threads": 1})
    store, gguf = StepStore(tmp_path / "store"), tmp_path / "m.gguf"
    first = drift.fresh_benchmark(store, gguf, "k", target, 1, 0, None)
    assert len(calls) == 1 and not first["reused_cached_measurement"] and first["remeasured_because"] is None
    again = drift.fresh_benchmark(store, gguf, "k", target, 1, 0, None)  # seconds later, same load
    assert len(calls) == 1 and again["reused_cached_measurement"] and again["tg_tps"]["median"] == 51.0
    step = next((tmp_path / "store").glob("bench-*")) / "step.json"  # age the cached measurement by 2 hours
    data = json.loads(step.read_text())
    data["meta"]["measured_at"] -= 7200
    step.write_text(json.dumps(data))
    started = time.time() - 60  # this run started a minute ago
    redo = drift.fresh_benchmark(store, gguf, "k", target, 1, 0, started)
    assert len(calls) == 2 and "min ago" in redo["remeasured_because"] and redo["tg_tps"]["median"] == 52.0
    resumed = drift.fresh_benchmark(store, gguf, "k", target, 1, 0, started)  # a resumed run: no third run
    assert len(calls) == 2 and resumed["tg_tps"]["median"] == 52.0 and resumed["reused_cached_measurement"]


def _front_manifest(run_dir: Path) -> Path:
    from test_report_card import _iteration

    its = [_iteration(0, [], 30.0, 100.0, False), _iteration(4, [12, 13, 14, 15], 40.0, 125.0, True)]
    for it, (lat, ratio) in zip(its, ((0.95, 1.0), (0.9, 1.2))):
        it["predicted"] = {"kind": "predicted", "latency_s": lat, "tg_tps": 100 / lat, "ppl_ratio": ratio}
    row = lambda k, lat, r: {"label": f"-{k}L Q4_K_M", "latency_s": lat, "tg_tps": 100 / lat, "ppl_ratio": r,
                             "kind": "predicted"}
    search = [{"verdict": "try", "front": [row(0, 1.1, 1.0), row(4, 0.9, 1.2), row(8, 0.7, 1.6)],
               "choice": row(4, 0.9, 1.2)}]
    manifest = json.loads((run_dir / "manifest.json").read_text()) | {"iterations": its, "search": search}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def test_front_plot_written_and_embedded_by_report(run_dir):
    from edgeprune.report.build import build_report
    from edgeprune.report.plots import front_plot

    _front_manifest(run_dir)
    written = build_report(run_dir)
    png = run_dir / "plots" / "pareto_front.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "![pareto_front](plots/pareto_front.png)" in (run_dir / "report.md").read_text()
    assert (run_dir / "report.html").read_text().count("data:image/png;base64,") >= 4
    # nothing predicted (an old manifest): no plot rather than an empty one
    assert front_plot([], [{"k": 0}], {"latency_s": 1.0}, run_dir / "none.png") is None
    assert not (run_dir / "none.png").exists()


@pytest.fixture
def run_dir(tmp_path):
    from test_report_card import run_dir as fixture

    return fixture.__wrapped__(tmp_path)
