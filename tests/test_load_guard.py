"""Load awareness: an oversubscribed benchmark is retaken after a wait, or the run stops in one line.
Load readings and waits are injected: no real load, no real timing."""

from __future__ import annotations

import pytest

from edgeprune.errors import MachineBusyError
from edgeprune.planner.load_guard import LoadPolicy, busy_reason, guarded_benchmark, load_now_reason

POLICY = LoadPolicy(retakes=3, wait_s=60.0, cores=2)


def bench(load: float, tg: float = 50.0, measured: bool = True) -> dict:
    return {"loadavg": load, "tg_tps": {"median": tg}, "measured": measured}


def run(readings: list[dict], on_this_machine: bool = True, drifts: list[float | None] | None = None,
        loads_now: list[float] | None = None):
    """Feed `readings` in order as the benchmark's tries and `loads_now` as the load read after each wait;
    returns (result, tries taken, waits, log)."""
    taken, waits, log = [], [], []
    drifts = drifts or [None] * len(readings)
    loads = iter(loads_now or [0.5] * 10)

    def take(attempt: int) -> dict:
        taken.append(attempt)
        return readings[len(taken) - 1]

    def reason(b: dict) -> str | None:
        return busy_reason(b, drifts[len(taken) - 1], on_this_machine, POLICY)

    res = guarded_benchmark(take, reason, "-3 layers Q4_K_M", POLICY, log=log.append, sleep=waits.append,
                            busy_now=lambda: load_now_reason(on_this_machine, POLICY, read_load=lambda: next(loads)))
    return res, taken, waits, log


def test_idle_machine_takes_one_measurement():
    res, taken, waits, _ = run([bench(0.4)])
    assert taken == [0] and waits == [] and "retaken_because" not in res


def test_loaded_baseline_is_retaken_until_the_load_falls():
    # the case: load 7 on 2 cores measured 1.6 tok/s; that number must not set the level
    res, taken, waits, log = run([bench(7.1, tg=1.6), bench(3.2, tg=20.0), bench(1.2, tg=61.0)])
    assert taken == [0, 1, 2] and waits == [60.0, 60.0]
    assert res["tg_tps"]["median"] == 61.0
    assert res["retaken_because"] == ["load average 7.1 above the 2 cores", "load average 3.2 above the 2 cores"]
    assert log[0] == ("benchmark of -3 layers Q4_K_M not used (load average 7.1 above the 2 cores); "
                      "retaking in 60 s (1/3)")


def test_load_exactly_at_the_cores_is_not_oversubscribed():
    _, taken, _, _ = run([bench(2.0)])
    assert taken == [0]
    _, _, _, log = run([bench(2.03), bench(1.0)])
    assert log[0].startswith("benchmark of -3 layers Q4_K_M not used (load average 2.03 above the 2 cores)")


def test_always_busy_stops_with_one_line_and_its_own_exit_code():
    with pytest.raises(MachineBusyError) as err:
        run([bench(6.0)], loads_now=[1.0, 5.5, 6.3, 7.0])
    line = err.value.one_line()
    assert "\n" not in line and err.value.exit_code == 3
    assert "4 tries over 3 min" in line and "last: load average 7.0 above the 2 cores, not measured" in line
    assert "rerun when it is quieter" in line


def test_while_the_load_stays_high_the_retakes_wait_instead_of_measuring():
    # one refused measurement (which may take minutes at 2 tok/s), then only waits until the load falls
    res, taken, waits, log = run([bench(6.9, tg=2.0), bench(1.1, tg=60.0)], loads_now=[1.5, 6.5, 4.0, 1.2])
    assert taken == [0, 3] and waits == [60.0, 60.0, 60.0] and res["tg_tps"]["median"] == 60.0
    assert res["retaken_because"] == ["load average 6.9 above the 2 cores", "load average 6.5 above the 2 cores, "
                                      "not measured", "load average 4.0 above the 2 cores, not measured"]
    assert [line.split(" (")[0] for line in log] == ["benchmark of -3 layers Q4_K_M not used"] * 3


def test_paired_measurement_far_below_the_level_is_retaken_even_at_low_load():
    # the baseline measured alongside ran at 0.3x its own earlier speed: the minute was slow, not the model
    res, taken, _, _ = run([bench(0.5), bench(0.6)], drifts=[0.3, 0.97])
    assert taken == [0, 1]
    assert res["retaken_because"] == ["the baseline measured alongside ran at 0.30x the run's level (below 0.5x)"]


def test_ssh_device_ignores_this_hosts_load_but_not_its_own_drift():
    _, taken, _, _ = run([bench(9.0)], on_this_machine=False)
    assert taken == [0]
    _, taken, _, _ = run([bench(9.0), bench(9.0)], on_this_machine=False, drifts=[0.2, 1.0])
    assert taken == [0, 1]


def test_fake_runner_numbers_are_never_retaken():
    _, taken, _, _ = run([bench(50.0, measured=False)], drifts=[0.01])
    assert taken == [0]


def test_a_retake_measures_anew_instead_of_reading_the_cache(tiny_gguf_for_bench, tmp_path):
    """Attempt 0 may be a cache hit; attempt 1 is a new step key, so a new measurement."""
    from edgeprune.store import StepStore
    from edgeprune.stages.bench import benchmark
    from edgeprune.targets import load_target

    gguf, key = tiny_gguf_for_bench
    store = StepStore(tmp_path / "store")
    target = load_target("host", {"device.runner": "fake"})
    first = benchmark(store, gguf, key, target, 1, 0)
    again = benchmark(store, gguf, key, target, 1, 0)
    retaken = benchmark(store, gguf, key, target, 1, 0, retake=1)
    assert again["measured_at"] == first["measured_at"]  # cache hit
    assert retaken["measured_at"] > first["measured_at"]
    assert [s["cache_hit"] for s in store.log] == [False, True, False]


@pytest.fixture
def tiny_gguf_for_bench(tmp_path):
    """Any file stands in for a GGUF with the fake runner (its numbers come from the file size)."""
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(4096))
    return path, "tiny:Q4_K_M"


def test_a_runner_refusing_its_own_busy_measurement_is_a_retake():
    """The worker refuses repetitions that stayed too far apart (tg ratio 0.17-1.84 under load 5):
    raised as MachineBusyError it is one more busy try, not the end of the run."""
    tries = iter([MachineBusyError("benchmark repetitions disagree: tg_ratio 0.166/1.84"), bench(0.8, tg=60.0)])

    def take(attempt):
        got = next(tries)
        if isinstance(got, Exception):
            raise got
        return got

    waits = []
    res = guarded_benchmark(take, lambda b: busy_reason(b, None, True, POLICY), "-1 layers Q4_K_M", POLICY,
                            log=lambda s: None, sleep=waits.append)
    assert res["tg_tps"]["median"] == 60.0 and waits == [60.0]
    assert res["retaken_because"] == ["benchmark repetitions disagree: tg_ratio 0.166/1.84"]


def test_no_measurement_while_the_machine_is_already_oversubscribed():
    # load 5 before the first try: wait instead of a 9-minute benchmark that would be refused anyway
    res, taken, waits, _ = run([bench(0.9, tg=61.0)], loads_now=[5.0, 1.4])
    assert taken == [1] and waits == [60.0] and res["tg_tps"]["median"] == 61.0
    assert res["retaken_because"] == ["load average 5.0 above the 2 cores, not measured"]
