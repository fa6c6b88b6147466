"""The planner's quality memory (planner/quality_memory.py): ratios measured by earlier plans of the
same model and protocol seed a later plan's quality model; a run's snapshot keeps a resume stable."""

from __future__ import annotations

import json
import math

import pytest

from edgeprune.planner import quality_memory as qm
from edgeprune.planner.candidates import BETA_PRIOR, QualityModel
from edgeprune.planner.predict_only import load_model_config
from edgeprune.planner.searcher import Searcher
from edgeprune.targets.costmodel import Candidate
from edgeprune.targets.gguf_size import ModelShape

SMOL = ModelShape.from_config(load_model_config("smollm2-135m")[0])
COSTS = [k / 30 for k in range(9)]


def _key(heal: str) -> dict:
    return {"model": "abc123", "heal": {"method": heal}, "quality": {"windows": 8}}


def test_a_later_run_starts_from_the_ratios_an_earlier_run_measured(tmp_path):
    key = _key("down-cut")
    shared = qm.memory_path(key)
    qm.remember(shared, key, Candidate(0), 1.0)
    qm.remember(shared, key, Candidate(6), 2.4)
    qm.remember(shared, key, Candidate(6), 2.1)  # measured again: replaces, never averages in a stale one
    samples = qm.snapshot(shared, tmp_path)
    assert [(s["layers_removed"], s["ppl_ratio"]) for s in samples] == [(0, 1.0), (6, 2.1)]

    s = Searcher(SMOL, None, None, 8, QualityModel(COSTS, "Q4_K_M"), None)
    assert s.quality.beta == BETA_PRIOR
    assert s.seed_quality(samples) == 2
    assert s.quality.beta == pytest.approx(math.log(2.1) / (6 / 30))  # 3.71, not the SmolLM2 prior 5.5
    assert s.quality.predict(Candidate(6)) == pytest.approx(2.1)
    assert s.quality.predict(Candidate(3)) == pytest.approx(math.exp(s.quality.beta * 3 / 30))


def test_the_run_snapshot_keeps_a_resume_deciding_as_the_first_attempt_did(tmp_path):
    """Mutant caught: reading the shared file on every start (a resumed run would see its own
    first attempt's measurements and could pick another candidate)."""
    key = _key("down-cut")
    shared = qm.memory_path(key)
    qm.remember(shared, key, Candidate(4, quant="Q4_0"), 1.7)
    first = qm.snapshot(shared, tmp_path)
    qm.remember(shared, key, Candidate(2), 1.3)  # measured by the first attempt, after it started
    assert qm.snapshot(shared, tmp_path) == first
    assert len(json.loads(shared.read_text())["samples"]) == 2


def test_other_healing_or_protocol_is_another_memory_and_damage_is_no_memory(tmp_path):
    a, b = qm.memory_path(_key("down-cut")), qm.memory_path(_key("none"))
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    assert a != b and a.parent == b.parent
    qm.remember(a, _key("down-cut"), Candidate(6), 2.1)
    assert qm.snapshot(b, tmp_path / "x") == []
    a.write_text("{not json")
    assert qm.snapshot(a, tmp_path / "y") == []
    qm.remember(a, _key("down-cut"), Candidate(6), float("nan"))  # no ratio, nothing to remember
    assert a.read_text() == "{not json"
