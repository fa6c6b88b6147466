"""Inputs that could write outside their place or destroy a user's files (issue 16)."""

from __future__ import annotations

import pytest

from edgeprune.errors import MachineBusyError, ConfigError

BAD_NAMES = ["../../etc/x", "/abs/path", "..", ".hidden", "-rf", "a/b", "a\\b", "", "x" * 65, "name with space"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_target_name_that_is_not_a_file_name_is_refused(tmp_path, name):
    """Mutant caught: Target.name without the file-name check (calibration JSON then landed at
    calibration_dir()/../../etc/x.json)."""
    from edgeprune.config.loader import validate_dict
    from edgeprune.config.target import Target

    with pytest.raises(ConfigError, match="name"):
        validate_dict({"version": 1, "name": name, "device": {"ram_gb": 8, "mem_bandwidth_gbs": 10}, "budget": {}},
                      Target, str(tmp_path / "t.yaml"))


def test_calibration_path_stays_in_its_folder_even_when_validation_was_skipped(tmp_path, monkeypatch):
    """Mutant caught: calibration_path joining the name unchecked."""
    from edgeprune.targets.calibration import calibration_dir, calibration_path

    monkeypatch.setenv("EDGEPRUNE_CALIBRATION", str(tmp_path / "cal"))
    for name in ("../../outside", "/tmp/abs", ".."):
        with pytest.raises(ConfigError):
            calibration_path(name, "local")
    assert calibration_path("arm16g", "ssh").parent == calibration_dir()


# --- prune --out: nothing of the user's is lost; the output explains itself ----------------------

def _prune(args, out):
    from click.testing import CliRunner

    from edgeprune.cli import main

    return CliRunner().invoke(main, ["prune", *args, "--out", str(out)])


def test_prune_onto_a_users_folder_keeps_every_file(tmp_path, tiny_llama, small_calib):
    """Mutant caught: check_prune_out returning at once (publish_with's rmtree then deleted the folder)."""
    mine = tmp_path / "my-folder"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    (mine / "sub" / "data.csv").write_text("1,2\n")
    res = _prune(["--model", str(tiny_llama), "--remove", "1", "--calib", str(small_calib)], mine)
    assert res.exit_code == 2, res.output
    assert (mine / "thesis.tex").read_text() == "years of work" and (mine / "sub" / "data.csv").is_file()
    assert sorted(p.name for p in mine.rglob("*")) == ["data.csv", "sub", "thesis.tex"]


def test_pruned_folder_records_what_went_is_not_0700_and_can_be_replaced(tmp_path, tiny_llama, small_calib):
    """Mutants caught: no record written (the folder said nothing of the removed layers); mkdtemp's
    0700 kept on the published folder; check_prune_out refusing edgeprune's own earlier output."""
    import json
    import os

    from edgeprune.surgery.record import RECORD

    out = tmp_path / "pruned"
    res = _prune(["--model", str(tiny_llama), "--remove", "1", "--calib", str(small_calib)], out)
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout[res.stdout.index("{"):])
    rec = json.loads((out / RECORD).read_text())
    assert rec["tool"] == "edgeprune" and rec["kind"] == "depth" and rec["method"] == "block-influence"
    assert rec["removed"] == {"layers": sorted(info["removed"])} and rec["source_shape"]["num_hidden_layers"] == 4
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    again = _prune(["--model", str(tiny_llama), "--remove", "2", "--calib", str(small_calib)], out)
    assert again.exit_code == 0, again.output
    assert len(json.loads((out / RECORD).read_text())["removed"]["layers"]) == 2


def test_width_record_lists_heads_and_groups_removed(tmp_path, tiny_llama, small_calib):
    """Mutant caught: removed_width writing the kept heads instead of the removed ones."""
    import json

    from edgeprune.surgery.record import RECORD

    out = tmp_path / "heads"
    res = _prune(["--model", str(tiny_llama), "--method", "heads", "--fraction", "0.5", "--calib", str(small_calib)], out)
    assert res.exit_code == 0, res.output
    rec = json.loads((out / RECORD).read_text())
    assert rec["kind"] == "width" and len(rec["removed"]["kv_groups"]) == 4  # one list per layer
    for heads, groups in zip(rec["removed"]["query_heads"], rec["removed"]["kv_groups"]):
        assert len(groups) == 1 and heads == [groups[0] * 2, groups[0] * 2 + 1]  # GQA 4/2: a group is 2 heads
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 2


def test_removed_width_from_a_hand_made_decision():
    from edgeprune.surgery.record import removed_width

    shape = {"num_attention_heads": 6, "num_key_value_heads": 3, "intermediate_size": 4}
    got = removed_width(shape, {"heads": [[0, 1, 4, 5], [2, 3, 4, 5]], "ffn": [[0, 3], [1, 2]]})
    assert got == {"query_heads": [[2, 3], [0, 1]], "kv_groups": [[1], [0]], "mlp_channels": [[1, 2], [0, 3]]}


def test_failed_plan_leaves_no_lock_in_out(tmp_path):
    """Mutant caught: out_lock without the unlink (a .lock stayed in --out after every run)."""
    from edgeprune.planner.publish import out_lock

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError):
        with out_lock(out):
            assert (out / ".lock").exists()
            raise RuntimeError("the plan failed")
    assert list(out.iterdir()) == []
    with out_lock(out):
        pass
    assert list(out.iterdir()) == []


# --- arch: a local runner measures this machine, and says so ------------------------------------

def _foreign_device(**extra):
    from edgeprune.config.target import Device
    from edgeprune.devices.runners import host_arch

    other = "x86_64" if host_arch() == "aarch64" else "aarch64"
    return Device(ram_gb=8, mem_bandwidth_gbs=10, arch=other, **extra), other


def test_local_runner_refuses_another_arch_and_labels_when_allowed(tmp_path, monkeypatch):
    """Mutants caught: get_runner without check_runner_arch (refusal gone); the labelled wrapper
    dropped (numbers from this host unmarked)."""
    import json
    import subprocess

    from edgeprune.devices import BenchSpec, get_runner
    from edgeprune.devices.runners import host_arch

    dev, other = _foreign_device()
    with pytest.raises(ConfigError, match=f"device.arch is {other} but the local runner would measure on this "
                                          f"{host_arch()} machine"):
        get_runner("local", dev)
    worker_json = json.dumps({"tg_tps": {"median": 1.0, "samples": [1.0]}, "pp_tps": {"median": 1.0}})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, worker_json + "\n", ""))
    allowed, _ = _foreign_device(allow_foreign_arch=True)
    res = get_runner("local", allowed)(tmp_path / "m.gguf", BenchSpec(8, 4))
    assert res["foreign_arch"] == f"measured on {host_arch()} host, not on the target ({other})"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert "foreign_arch" not in get_runner("fake", allowed)(gguf, BenchSpec(8, 4))  # fake measures nothing real


def test_plan_arm16g_on_x86_exits_2_in_one_line(tmp_path, tiny_llama):
    """The issue's own check: `edgeprune plan --target arm16g` on this x86 machine. Mutant caught:
    run_plan without check_runner_arch (an x86 verdict reported for an ARM device)."""
    from click.testing import CliRunner

    from edgeprune.cli import main
    from edgeprune.devices.runners import host_arch

    if host_arch() != "x86_64":
        pytest.skip("the arm16g target is this machine's arch")
    res = CliRunner().invoke(main, ["plan", "--target", "arm16g", "--model", str(tiny_llama), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "aarch64" in lines[0] and "x86_64" in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


# --- numbers that are not numbers: NaN weights, repetitions that disagree ------------------------

def test_first_nonfinite_on_hand_made_arrays():
    import numpy as np
    import torch

    from edgeprune.toolchain.gguf_check import first_nonfinite

    ok = np.ones((2, 3))
    assert first_nonfinite([("a", ok), ("b", torch.zeros(4))]) is None
    assert first_nonfinite([("a", ok), ("b", np.array([1.0, np.inf, np.nan]))]) == ("b", 2, 3)
    assert first_nonfinite([("w", torch.tensor([[0.0, float("nan")]]))]) == ("w", 1, 2)


def test_nan_weight_fails_the_export_gate_naming_the_tensor(tmp_path, tokenizer_dir, isolated_store):
    """A NaN compares False with any limit, so `cos < limit` let NaN weights through to the quantizer,
    whose error named a deleted temp file. Mutant caught: export without check_finite on the weights
    (the answer then named no tensor)."""
    import torch
    from safetensors.torch import load_file, save_file

    from conftest import build_tiny
    from edgeprune.config.recipe import Export
    from edgeprune.errors import ExportError
    from edgeprune.store import StepStore, tree_hash
    from edgeprune.stages.export import export_gguf

    m = build_tiny(tmp_path / "nan", tokenizer_dir)
    st = next(m.glob("*.safetensors"))
    w = load_file(st)
    w["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(w, st, metadata={"format": "pt"})
    with pytest.raises(ExportError) as err:
        export_gguf(StepStore(isolated_store), m, tree_hash(m), Export())
    msg = str(err.value)
    assert "model.layers.1.mlp.down_proj.weight has 1 non-finite values" in msg and str(m) in msg
    assert ".tmp" not in msg
    assert not [p for p in isolated_store.iterdir() if p.name.startswith("export-")]  # nothing cached


def _worker_with(monkeypatch, tmp_path, tg: list[float]):
    """bench_worker.run with _one_rep replaced by a sequence of decode speeds (prefill 10x)."""
    from edgeprune.devices import bench_worker

    seq = iter(tg)
    monkeypatch.setattr(bench_worker, "_load", lambda *a, **k: object())
    monkeypatch.setattr(bench_worker, "_prompt", lambda llm, n: [1] * n)
    monkeypatch.setattr(bench_worker, "_one_rep", lambda llm, p, n: (10 * (v := next(seq)), v))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    return bench_worker.run(str(gguf), 8, 4, 3, 1, 1)


def test_repetitions_that_disagree_are_retaken(tmp_path, monkeypatch):
    """1.2 / 3.2 / 138.8 tok/s was once accepted and cached. Mutant caught: the retake loop removed
    (that spread then stood as the measurement)."""
    res = _worker_with(monkeypatch, tmp_path, [5.0, 1.2, 3.2, 138.8, 3.1, 3.0, 3.2])
    assert res["tg_tps"]["samples"] == [3.1, 3.0, 3.2] and res["tg_tps"]["median"] == 3.1
    assert res["spread"]["ok"] and res["spread"]["retaken"] == 3
    assert res["spread"]["discarded"]["tg_tps"] == [1.2, 3.2, 138.8]


def test_repetitions_that_never_agree_are_refused_and_never_cached(tmp_path, monkeypatch, isolated_store):
    """Mutant caught: check_spread returning the result as-is (the noisy benchmark was cached and
    reused by the rerun)."""
    import json
    import subprocess

    from edgeprune.devices import runners
    from edgeprune.errors import ToolchainError
    from edgeprune.store import StepStore
    from edgeprune.stages.bench import benchmark
    from edgeprune.targets import load_target

    bad = _worker_with(monkeypatch, tmp_path, [5.0] + [1.0, 100.0] * 20)
    assert not bad["spread"]["ok"] and bad["spread"]["retaken"] == 9  # 12 = MAX_REPS_FACTOR 4 x 3 asked
    good = dict(bad, spread=dict(bad["spread"], ok=True))
    answers = [bad, good]
    calls = []

    def fake_worker(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, json.dumps(answers[len(calls) - 1]) + "\n", "")

    monkeypatch.setattr(runners.subprocess, "run", fake_worker)
    store, gguf = StepStore(isolated_store), tmp_path / "m.gguf"
    target = load_target("host")
    with pytest.raises(MachineBusyError, match="benchmark repetitions disagree: tg 100/1/100"):
        benchmark(store, gguf, "k", target, 3, 1)
    assert benchmark(store, gguf, "k", target, 3, 1)["spread"]["ok"] and len(calls) == 2  # measured again
