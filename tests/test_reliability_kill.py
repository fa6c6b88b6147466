"""SIGKILL `edgeprune plan` inside each stage in turn, rerun, and check that nothing is lost.

The kill is deterministic: EDGEPRUNE_TEST_KILL_AT=<stage> makes the process SIGKILL itself
once that stage's outputs are written to its temp dir but not yet renamed into place (the
worst moment), or, for "publish", once the final GGUF is copied to its hidden temp name in
--out. Checked after every kill: no step dir without step.json, no GGUF or manifest in --out;
on every rerun: steps finished by earlier runs are cache hits, never rebuilt. At the end the
artifact is byte-identical to an uninterrupted run's in a fresh store (same seed).

Slow tier: two fresh pipelines of the tiny model with two exports each (~4-8 min on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KILL_ORDER = ["import", "score", "export", "bench", "ppl", "prune", "publish"]
SMALL_RECIPE = """version: 1
name: small
seed: 0
calibration: {samples: 4, seq_len: 64}
quality: {ctx: 128, windows: 2}
bench: {repetitions: 1, warmup: 0}
max_iterations: 2
"""


def plan(model, calib, recipe, out, store, latency, kill_at=None, *extra):
    # unbuffered: a SIGKILL must not swallow the log lines printed before it. The planner's
    # cost-model calibration is per-store here, so each sequence starts from the same (empty) one.
    env = {**os.environ, "EDGEPRUNE_STORE": str(store), "EDGEPRUNE_TEST_KILL_AT": kill_at or "",
           "PYTHONUNBUFFERED": "1", "EDGEPRUNE_CALIBRATION": str(Path(store).with_name(Path(store).name + "-calib"))}
    argv = [sys.executable, "-c", "from edgeprune.cli import main; main()", "plan", "--model", str(model), "--runner", "fake",
            "--calib", str(calib), "--recipe", str(recipe), "--max-ppl-ratio", "5", "--latency", f"{latency:.6f}",
            "--out", str(out), "--verbose", *extra]  # --verbose: the store's "built:"/"cache hit:" lines
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def steps_in(stdout: str) -> tuple[set[str], set[str]]:
    """(dirs built, dirs hit) from the store's log lines."""
    built = set(re.findall(r"^built: \w+ \(([\w-]+)\)", stdout, re.M))
    hit = set(re.findall(r"^cache hit: \w+ \(([\w-]+)\)", stdout, re.M))
    return built, hit


def assert_no_partial(store: Path, out: Path):
    for entry in store.iterdir():
        if not entry.name.startswith("."):
            assert (entry / "step.json").is_file(), f"half step under its final name: {entry}"
    if out.exists():
        visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        assert visible == [], f"files published by a killed run: {visible}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def setup(tiny_llama, small_calib, tmp_path):
    from edgeprune.config.recipe import Recipe

    text = SMALL_RECIPE
    if "search" in Recipe.model_fields:
        # One quant type: on the tiny model a smaller quant beats pruning (its embeddings are ~95 % of
        # the bytes), and this test needs the plan to prune so that the prune stage runs.
        text += "search: {quants: [Q4_K_M]}\n"
    recipe = tmp_path / "small.yaml"
    recipe.write_text(text)
    return tiny_llama, small_calib, recipe


def test_kill_each_stage_then_resume_to_the_same_bytes(setup, tmp_path):
    model, calib, recipe = setup
    # Reference, uninterrupted, in its own store: a loose budget gives the unpruned latency, then a
    # budget just under it makes the plan remove one layer (so prune runs).
    ref_store = tmp_path / "store-ref"
    loose = plan(model, calib, recipe, tmp_path / "loose", ref_store, 100)
    assert loose.returncode == 0, loose.stderr[-2000:]
    base = json.loads((tmp_path / "loose" / "manifest.json").read_text())["iterations"][0]["latency_s"]
    tight = base * 0.999
    ref = plan(model, calib, recipe, tmp_path / "ref", ref_store, tight)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_m = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert [it["k"] for it in ref_m["iterations"]] == [0, 1]
    ref_art = tmp_path / "ref" / ref_m["result"]["artifact"]

    store, out = tmp_path / "store", tmp_path / "out"
    finished: set[str] = set()
    for stage in KILL_ORDER:
        res = plan(model, calib, recipe, out, store, tight, kill_at=stage)
        assert res.returncode == -signal.SIGKILL, f"{stage}: not killed (rc {res.returncode}) {res.stderr[-500:]}"
        built, hit = steps_in(res.stdout)
        assert not built & finished, f"{stage}: recomputed {built & finished}"
        assert finished <= hit | built or stage == "import"
        assert_no_partial(store, out)
        if stage != "publish":
            assert list(store.glob(f".tmp-{stage}-*")), f"{stage}: the kill did not land inside the stage"
        finished |= built
    assert [p.name for p in out.glob(".*.gguf.tmp-*")], "publish kill left no temp GGUF to clean"

    final = plan(model, calib, recipe, out, store, tight)
    assert final.returncode == 0, final.stderr[-2000:]
    built, _ = steps_in(final.stdout)
    assert built == set(), f"the resumed run rebuilt {built}"
    assert "left by a killed run" in final.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert all(s["cache_hit"] for s in m["steps"])
    # every export both stores made (same key) holds the same bytes, then the published artifact
    shared = {d.name for d in store.glob("export-*")} & {d.name for d in ref_store.glob("export-*")}
    assert shared
    for name in shared:
        assert sha256(next((store / name).glob("*.gguf"))) == sha256(next((ref_store / name).glob("*.gguf")))
    art = out / m["result"]["artifact"]
    assert sha256(art) == sha256(ref_art)
    assert not list(out.glob(".*.tmp-*")) and not list(store.glob(".tmp-*"))

    # determinism across fresh stores: same plan, same scores, same decisions, same bytes
    assert m["plan"] == {**ref_m["plan"], "out": str(out)}
    assert m["depth_scores"] == ref_m["depth_scores"]
    assert [it["removed_layers"] for it in m["iterations"]] == [it["removed_layers"] for it in ref_m["iterations"]]
    assert [it["ppl"]["ppl"] for it in m["iterations"]] == [it["ppl"]["ppl"] for it in ref_m["iterations"]]

    # --from export: import, score and prune come from the cache; export onwards is rebuilt, to the same bytes
    again = plan(model, calib, recipe, tmp_path / "again", store, tight, None, "--from", "export")
    assert again.returncode == 0, again.stderr[-2000:]
    built, hit = steps_in(again.stdout)
    assert {d.split("-")[0] for d in built} == {"export", "bench", "ppl"}
    assert {d.split("-")[0] for d in hit} == {"import", "score", "prune"}
    m2 = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert sha256(tmp_path / "again" / m2["result"]["artifact"]) == sha256(ref_art)


def test_export_gates_block_publishing(tiny_llama, tmp_path, monkeypatch):
    """A quantization that drifts past export.kld_max, or a GGUF whose header disagrees with the
    model, stops the export step: nothing appears under a final name in the store."""
    from edgeprune.config.recipe import Export
    from edgeprune.errors import ExportError
    from edgeprune.store import StepStore
    from edgeprune.stages import export as export_stage

    store = StepStore(tmp_path / "store")
    with pytest.raises(ExportError, match=r"Q4_K_M GGUF drifts from F16: mean KL 0\.\d+ > 1e-06"):
        export_stage.export_gguf(store, tiny_llama, "tiny", Export(kld_max=1e-6))
    real = export_stage.expected_header
    monkeypatch.setattr(export_stage, "expected_header", lambda cfg: {**real(cfg), "llama.block_count": 5})
    with pytest.raises(ExportError, match="GGUF structure check failed: llama.block_count is 4, expected 5"):
        export_stage.export_gguf(store, tiny_llama, "tiny", Export())
    assert [p.name for p in store.root.iterdir() if p.name != ".locks"] == []
