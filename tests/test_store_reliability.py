"""Step store under kills, concurrent runs, forced rebuilds and full disks (no model: seconds)."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.errors import DiskError
from edgeprune.atomic import atomic_copy, clear_stale_temps
from edgeprune.store import StepStore
from edgeprune.planner.steps import steps_from
from edgeprune.toolchain.gguf_check import TensorEntry, structure_problems

# A child process that runs two steps, each writing a file and counting its builds in a log.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edgeprune.store import StepStore
    root, log = Path(sys.argv[1]), Path(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    store = StepStore(root)
    def builder(name):
        def build(out):
            with open(log, "a") as fh:
                fh.write(name + "\\n")
            (out / "data.bin").write_bytes(name.encode() * 1000)
            time.sleep(pause)
            return {"name": name}
        return build
    for name in ("score", "export"):
        res = store.run(name, {"input": "x"}, builder(name))
        print(name, res.hit, res.path.name, flush=True)
""")


def child(root, log, *extra, kill_at=None, wait=True):
    env = {**os.environ, "EDGEPRUNE_TEST_KILL_AT": kill_at or ""}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(log), *map(str, extra)],
                            env=env, stdout=subprocess.PIPE, text=True)
    if wait:
        proc.wait(timeout=120)
    return proc


def step_dirs(root):
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_sigkill_in_a_step_leaves_only_finished_steps_and_a_rerun_resumes(tmp_path):
    root, log = tmp_path / "store", tmp_path / "builds.log"
    proc = child(root, log, kill_at="export")
    assert proc.returncode == -signal.SIGKILL
    # score finished; export was killed after writing its files, before the rename
    assert [d.split("-")[0] for d in step_dirs(root)] == ["score"]
    leftovers = list(root.glob(".tmp-export-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "data.bin").is_file()

    proc = child(root, log)
    lines = proc.stdout.read().split()
    assert proc.returncode == 0
    assert lines[1] == "True" and lines[4] == "False"  # score: cache hit; export: built
    assert log.read_text().split() == ["score", "export", "export"]  # score built once
    assert not list(root.glob(".tmp-*"))  # the dead run's temp dir was cleared under the lock
    assert all((root / d / "step.json").is_file() for d in step_dirs(root))


def test_two_runs_sharing_a_store_build_each_step_once(tmp_path):
    root, log = tmp_path / "store", tmp_path / "builds.log"
    first = child(root, log, 1.5, wait=False)
    time.sleep(0.5)  # let the first one take the lock of step 'score'
    second = child(root, log, 1.5, wait=False)
    out1, out2 = first.communicate(timeout=120)[0], second.communicate(timeout=120)[0]
    assert first.returncode == second.returncode == 0
    assert sorted(log.read_text().split()) == ["export", "score"]  # never built twice
    hits = out1.split()[1::3] + out2.split()[1::3]
    assert sorted(hits) == ["False", "False", "True", "True"]


def test_from_stage_rebuilds_that_stage_and_later_ones_once_per_run(tmp_path):
    assert steps_from("export") == {"export", "bench", "ppl", "kld", "tasks"}
    assert steps_from("recover") == {"recover", "imatrix", "export", "bench", "ppl", "kld", "tasks"}
    assert steps_from(None) == set()
    builds = []

    def build(name):
        return lambda out: builds.append(name) or {"n": len(builds)}

    first = StepStore(tmp_path)
    for name in ("import", "score", "export", "bench"):
        first.run(name, {"k": 1}, build(name))
    builds.clear()
    redo = StepStore(tmp_path, redo=steps_from("export"))
    for name in ("import", "score", "export", "bench", "export"):
        redo.run(name, {"k": 1}, build(name))
    assert builds == ["export", "bench"]  # the second export of this run reuses the rebuilt one
    assert [s["cache_hit"] for s in redo.log] == [True, True, False, False, True]


def test_cache_hits_are_printed(tmp_path):
    lines = []
    StepStore(tmp_path).run("score", {"k": 1}, lambda out: {})
    StepStore(tmp_path, echo=lines.append).run("score", {"k": 1}, lambda out: {})
    assert len(lines) == 1 and lines[0].startswith("cache hit: score (score-")


def test_disk_full_while_building_keeps_nothing(tmp_path):
    def build(out):
        (out / "half.bin").write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    store = StepStore(tmp_path)
    with pytest.raises(DiskError, match="disk full while building step 'export'"):
        store.run("export", {"k": 1}, build)
    assert not any(p.name.startswith(("export-", ".tmp-")) for p in tmp_path.iterdir())


def test_free_disk_is_checked_before_building(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("edgeprune.store.disk.shutil.disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    called = []
    with pytest.raises(DiskError, match=r"need ~0\.1 MB, found 0\.0 MB free"):
        StepStore(tmp_path).run("export", {"k": 1}, lambda out: called.append(1), need_bytes=100_000)
    assert not called


def test_killed_publish_leaves_no_half_gguf_under_its_final_name(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"GGUF" + os.urandom(1 << 20))
    out = tmp_path / "out"
    out.mkdir()
    code = (f"from pathlib import Path; from edgeprune.atomic import atomic_copy; "
            f"atomic_copy(Path({str(src)!r}), Path({str(out / 'final.gguf')!r}))")
    env = {**os.environ, "EDGEPRUNE_TEST_KILL_AT": "publish"}
    proc = subprocess.run([sys.executable, "-c", code], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final.gguf").exists()
    temps = list(out.glob(".final.gguf.tmp-*"))
    assert len(temps) == 1 and temps[0].stat().st_size == src.stat().st_size
    assert clear_stale_temps(out) == temps and not list(out.iterdir())
    atomic_copy(src, out / "final.gguf")
    assert (out / "final.gguf").read_bytes() == src.read_bytes()


def test_second_plan_on_a_locked_out_dir_fails_at_once(tiny_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # what a running plan holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.perf_counter()
        res = CliRunner().invoke(main, ["plan", "--model", str(tiny_llama), "--runner", "fake", "--out", str(out)])
        elapsed = time.perf_counter() - t0
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: {out}: another edgeprune run holds this output dir — fix: wait for it to finish or choose "
        "another --out")
    assert elapsed < 30 and not [p for p in out.iterdir() if p.name != ".lock"]


def _entries(blocks, per_block=("attn_q.weight", "ffn_up.weight"), size=100):
    names = ["token_embd.weight", "output_norm.weight"] + [f"blk.{b}.{t}" for b in blocks for t in per_block]
    return [TensorEntry(n, 10 * i, 10) for i, n in enumerate(names)], size


def test_gguf_structure_check_on_hand_made_headers():
    meta = {"llama.block_count": 2, "llama.attention.head_count": 4}
    tensors, size = _entries([0, 1])
    assert structure_problems(tensors, size, meta, {"llama.block_count": 2, "tensor_count": 6}) == []
    assert structure_problems(tensors, size, meta, {"llama.block_count": 3}) == [
        "llama.block_count is 2, expected 3", "block indices [0, 1]..[0, 1] are not 0..2"]
    assert structure_problems(tensors, size, meta, {"tensor_count": 7}) == ["6 tensors, expected 7"]
    assert structure_problems(tensors, 55, meta, {}) == [
        "tensor data ends at byte 60 but the file has 55 (truncated)"]
    ragged = tensors[:-1]
    assert "blocks do not all have the same tensors" in structure_problems(ragged, size, meta, {})
    no_embd = tensors[1:]
    assert "tensor token_embd.weight missing" in structure_problems(no_embd, size, meta, {})


def test_export_gate_thresholds_are_in_the_recipe():
    from edgeprune import quants
    from edgeprune.config.recipe import Export

    assert Export().kld_max is None and quants.get("Q4_K_M").kld_max == 0.5
    assert Export(kld_max=0.2).kld_max == 0.2
    with pytest.raises(ValueError):
        Export(kld_max=0)
    assert json.loads(Export().model_dump_json())["kld_max"] is None


def test_same_seed_gives_identical_scores_in_two_fresh_stores(tiny_llama, small_calib, tmp_path):
    import torch

    from edgeprune.config.recipe import Calibration
    from edgeprune.stages.score import score_depth

    cfg = Calibration(path=small_calib, samples=4, seq_len=64, seed=0)
    runs = [score_depth(StepStore(tmp_path / f"s{i}"), tiny_llama, "tiny", "block-influence", cfg) for i in (1, 2)]
    (s1, r1), (s2, r2) = runs
    assert not r1.hit and not r2.hit  # both computed, not one read from the other
    assert torch.equal(s1, s2) and r1.meta["layer_scores"] == r2.meta["layer_scores"]
    assert r1.path.name == r2.path.name  # same key -> same content address
    other = score_depth(StepStore(tmp_path / "s3"), tiny_llama, "tiny", "block-influence",
                        Calibration(path=small_calib, samples=4, seq_len=64, seed=1))[1]
    assert other.path.name != r1.path.name  # the seed is part of the key


def test_a_new_store_sweeps_temp_dirs_of_dead_runs_but_not_live_ones(tmp_path):
    root, log = tmp_path / "store", tmp_path / "builds.log"
    assert child(root, log, kill_at="export").returncode == -signal.SIGKILL
    dead = [p.name for p in root.glob(".tmp-export-*")]
    live = child(root / "x", log, 3.0, wait=False)  # a live run in another store: untouched
    assert len(dead) == 1 and StepStore(root).swept == dead and not list(root.glob(".tmp-*"))
    deadline = time.time() + 60
    while not list((root / "x").glob(".tmp-score-*")) and time.time() < deadline:
        time.sleep(0.05)  # wait until the live run is inside its build (holding the step lock)
    assert StepStore(root / "x").swept == [] and list((root / "x").glob(".tmp-score-*"))
    live.communicate(timeout=120)
    assert live.returncode == 0


def test_a_rerun_does_not_count_its_cached_measurements_twice(tmp_path):
    from edgeprune.targets import calibration as cal

    path, fp = tmp_path / "t.json", {"runner": "fake"}
    s1 = {"features": {"decode": (1.0, 2.0), "prefill": (3.0, 4.0)}, "tg_tps": 100.0, "pp_tps": 1000.0,
          "peak_rss_bytes": 10, "ram_static": 5, "label": "k=0"}
    s2 = {**s1, "tg_tps": 120.0, "label": "k=1"}
    cal.add_sample(path, fp, s1)
    cal.add_sample(path, fp, s2)
    once = cal.load(path)["factors"]
    cal.add_sample(path, fp, s1)  # a resumed run re-reads the cached k=0 benchmark
    again = cal.load(path)
    assert [s["label"] for s in again["samples"]] == ["k=1", "k=0"] and again["factors"] == once


def test_a_resumed_run_calibrates_from_the_snapshot_its_first_attempt_took(tmp_path):
    from edgeprune.store.resume import (clear_run_calibration, merge_run_calibration,
                                         run_calibration_path)
    from edgeprune.targets import calibration as cal

    out, shared, fp = tmp_path / "out", tmp_path / "shared.json", {"runner": "fake"}
    out.mkdir()
    s0 = {"features": {"decode": [1.0, 2.0], "prefill": [3.0, 4.0]}, "tg_tps": 100.0, "pp_tps": 1000.0,
          "peak_rss_bytes": 10, "ram_static": 5, "label": "k=0"}
    cal.add_sample(shared, fp, s0)
    work = run_calibration_path(out, shared)  # first attempt: snapshot = [k=0]
    cal.add_sample(work, fp, {**s0, "label": "k=1", "tg_tps": 110.0})
    cal.add_sample(shared, fp, {**s0, "label": "other run", "tg_tps": 90.0})  # another plan, meanwhile
    # killed here; the rerun starts from the snapshot, not from the shared file or its own samples
    work = run_calibration_path(out, shared)
    assert [s["label"] for s in cal.load(work)["samples"]] == ["k=0"]
    cal.add_sample(work, fp, {**s0, "label": "k=1", "tg_tps": 110.0})
    assert merge_run_calibration(out, shared) == 1  # only the run's new sample reaches the shared file
    assert [s["label"] for s in cal.load(shared)["samples"]] == ["k=0", "other run", "k=1"]
    clear_run_calibration(out)
    assert list(out.iterdir()) == []
