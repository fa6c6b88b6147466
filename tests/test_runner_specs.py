"""Contract tests over every registered benchmark runner: its capability flags agree with what the
target validator, the CLI and the call sites do with it. Callers ask the spec, never the name, so a
runner registered here under a new name behaves as its flags say."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pydantic
import pytest

from edgeprune import registry
from edgeprune.config.target import Device
from edgeprune.devices.runners import BenchSpec, RunnerSpec, check_runner_arch, get_runner, host_arch
from edgeprune.errors import ConfigError

RUNNERS = registry.names("runner")


def device(runner: str, **extra) -> Device:
    return Device(ram_gb=16, mem_bandwidth_gbs=10, runner=runner, **extra)


def test_the_builtin_runners_are_registered():
    assert {"local", "fake", "ssh"} <= set(RUNNERS)


@pytest.mark.parametrize("name", RUNNERS)
def test_runner_spec_is_complete(name):
    spec = registry.get("runner", name)
    assert isinstance(spec, RunnerSpec) and spec.name == name and spec.summary
    params = inspect.signature(spec.measure).parameters
    assert list(params)[:2] == ["gguf", "spec"]
    if spec.pairing:
        assert "reference" in params, f"{name} claims pairing but takes no reference GGUF"
    if spec.remote:
        assert "device" in params, f"{name} is remote but cannot be bound to the target's device section"
    assert not (spec.remote and spec.on_this_machine), f"{name}: a remote runner does not measure this machine"
    assert spec.real or not (spec.remote or spec.on_this_machine), f"{name}: synthetic numbers measure no machine"


@pytest.mark.parametrize("name", RUNNERS)
def test_target_requires_ssh_host_exactly_for_remote_runners(name):
    """Mutant caught: the validator testing `runner == "ssh"` (a second remote runner accepted without a
    host, then failing mid-run) or requiring ssh_host of every runner."""
    spec = registry.get("runner", name)
    assert device(name, ssh_host="user@host").runner == name
    if spec.remote:
        with pytest.raises(pydantic.ValidationError, match=f"device.runner is '{name}' but device.ssh_host is not set"):
            device(name)
    else:
        assert device(name).ssh_host is None


@pytest.mark.parametrize("name", RUNNERS)
def test_only_runners_on_this_machine_check_the_arch(name):
    other = "aarch64" if host_arch() != "aarch64" else "x86_64"
    dev = device(name, arch=other, ssh_host="user@host")
    if registry.get("runner", name).on_this_machine:
        with pytest.raises(ConfigError, match=f"device.arch is {other}"):
            get_runner(name, dev)
    else:
        assert check_runner_arch(name, dev) is None


def test_unknown_runner_is_one_line_with_a_suggestion():
    """Mutant caught: device.runner back to a plain str without the registry check (a typo ran the local runner
    or failed deep in get_runner)."""
    with pytest.raises(pydantic.ValidationError) as err:
        device("shh")
    (e,) = err.value.errors()
    assert e["loc"] == ("runner",) and "unknown runner 'shh' (did you mean 'ssh'?)" in e["msg"]


def test_cli_runner_choices_are_the_registered_runners():
    """Mutant caught: a hard-coded click.Choice list that a newly registered runner is missing from."""
    from edgeprune.cli import plan

    (opt,) = [p for p in plan.params if p.name == "runner"]
    assert list(opt.type.choices) == RUNNERS


def test_a_new_runner_is_used_through_its_flags(monkeypatch, tmp_path):
    """A runner added under a new name, remote and unable to evict the cache: the target requires its host,
    the bench stage binds it to the device, keys its step by the host and asks it for no eviction. Mutants
    caught: the validator or stages/bench.py testing `runner == "ssh"` (no host required; device unbound,
    host missing from the key), or evict_llc_mb passed to every runner."""
    from edgeprune.config.target import Budget, Target
    from edgeprune.stages.bench import benchmark

    seen = {}

    def measure(gguf: Path, spec: BenchSpec, device=None, reference: Path | None = None) -> dict:
        seen.update(device=device, evict_mb=spec.evict_mb)
        return {"runner": "probe"}

    registry.get("runner", "fake")  # built-ins first, so the patch below is not overwritten by their import
    monkeypatch.setitem(registry._REGISTRY["runner"], "probe",
                        RunnerSpec("probe", measure, "a test remote", remote=True, cache_eviction=False))
    with pytest.raises(pydantic.ValidationError, match="device.runner is 'probe' but device.ssh_host is not set"):
        device("probe")
    dev = device("probe", ssh_host="user@board", evict_llc_mb=64)
    target = Target(name="t", device=dev, budget=Budget())

    class Store:
        def run(self, stage, key, build):
            return SimpleNamespace(meta=build(tmp_path) | {"key": key})

    out = benchmark(Store(), tmp_path / "m.gguf", "k", target, reps=1, warmup=0)
    assert seen == {"device": dev, "evict_mb": 0}
    assert out["key"]["ssh_host"] == "user@board:22" and out["key"]["runner"] == "probe"
    assert out["key"]["spec"]["evict_mb"] == 0


@pytest.mark.parametrize("name", RUNNERS)
def test_staleness_follows_the_flags(name):
    """A synthetic runner's cached numbers are never stale; a real one's without a time are; only a runner on
    this machine compares load averages. Mutant caught: drift.stale_reason testing the names fake/local."""
    from edgeprune.planner.drift import stale_reason

    spec = registry.get("runner", name)
    assert (stale_reason({}, name, 1, 1000.0, 0.0, 2, None) is None) == (not spec.real)
    busy_then = {"measured_at": 990.0, "loadavg": 12.0}
    reason = stale_reason(busy_then, name, 1, 1000.0, 0.0, 2, None)
    assert (reason is not None and "load average" in reason) == (spec.real and spec.on_this_machine)


def test_calibration_files_are_one_per_runner():
    """targets/calibration.calibration_path asks the spec (untagged_files) instead of testing
    `runner == "local"`: at most one runner writes untagged files, so no two share a file."""
    from edgeprune.targets.calibration import calibration_path

    assert sum(registry.get("runner", n).untagged_files for n in RUNNERS) <= 1
    paths = {calibration_path("host", n, "m1") for n in RUNNERS}
    assert len(paths) == len(RUNNERS)
    for n in RUNNERS:
        tag = "" if registry.get("runner", n).untagged_files else f".{n}"
        assert calibration_path("host", n, "m1").name == f"host{tag}.m1.json"
    assert calibration_path("host", "local").name == "host.json"  # the default runner's files keep their names
