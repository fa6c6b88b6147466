"""Benchmark runners, registered as specs with capability flags (runners.RunnerSpec): `local`
(llama-cpp-python in a subprocess), `ssh` (a remote device) and `fake` (for tests)."""

from edgeprune.devices.runners import BenchSpec, get_runner

__all__ = ["BenchSpec", "get_runner"]
