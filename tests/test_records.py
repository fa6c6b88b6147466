"""The planner's typed records write the manifest's entries (report/records.py): same keys as the
manifest has always had, optional stage records only when the stage ran."""

from edgeprune.report.records import CandidateRecord, Challenge, Measurement, Outcome
from edgeprune.targets.costmodel import Candidate

CHECKS = {"latency_s": {"required": 1.0, "measured": 0.9, "kind": "max", "met": True}}


def measurement(k: int = 3, heal: dict | None = None) -> Measurement:
    bench = {"tg_tps": {"median": 20.0}, "pp_tps": {"median": 200.0}}
    return Measurement(Candidate(k, quant="Q4_K_M"), [1, 2, 3][:k], 30 - k, "/s/model.gguf", "key:Q4_K_M", 1000,
                       {}, bench, 0.9, {"ppl": 30.0}, {"kind": "measured"}, heal=heal)


def record(m: Measurement, ratio: float = 1.5, **kw) -> CandidateRecord:
    return CandidateRecord(m, ratio, {"kind": "predicted"}, {"tg_tps": 1.0}, {"baseline": "b"}, CHECKS, {}, {}, **kw)


def test_an_iteration_has_the_manifests_keys_in_its_order():
    d = record(measurement(), latency_at_level_s=0.88).to_dict()
    assert list(d) == ["k", "quant", "candidate", "removed_layers", "layers", "gguf", "gguf_bytes", "verify", "bench",
                       "latency_s", "width_method", "ppl", "measured_where", "gguf_key", "ppl_ratio", "predicted",
                       "drift", "speed_level", "latency_at_level_s", "checks", "prediction_error_pct",
                       "absolute_prediction_error_pct"]
    assert d["k"] == 3 and d["candidate"]["layers_removed"] == 3 and d["quant"] == "Q4_K_M"


def test_stage_records_appear_only_when_the_stage_ran():
    plain, healed = record(measurement()).to_dict(), record(measurement(heal={"method": "down-cut"})).to_dict()
    assert not {"heal", "recovery", "kld", "latency_at_level_s"} & set(plain)
    assert healed["heal"] == {"method": "down-cut"}


def test_met_needs_every_check_and_the_quality_floor():
    rec = record(measurement(), ratio=3.0)
    assert rec.met(4.0) and not rec.met(2.0)
    assert rec.checked_latency_s == 0.9 and record(measurement(), latency_at_level_s=0.8).checked_latency_s == 0.8


def test_outcome_and_search_entries_write_the_result_keys():
    best = record(measurement(5))
    assert Outcome(True, "ok", final=best, iteration=2).to_dict() == {
        "met": True, "chosen_k": 5, "chosen_quant": "Q4_K_M", "reason": "ok", "iteration": 2}
    assert Outcome(False, "no", misses=CHECKS).to_dict() == {"met": False, "chosen_k": None, "reason": "no",
                                                             "misses": CHECKS}
    assert "why" not in Challenge("Q8_0", 1.0, 0.9, measured=True).to_dict()
    assert measurement(0).pruned is False and measurement(2).pruned is True
