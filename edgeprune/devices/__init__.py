"""Benchmark runners: `local` (llama-cpp-python in a subprocess) and `fake` (for tests)."""

from edgeprune.devices.runners import BenchSpec, get_runner

__all__ = ["BenchSpec", "get_runner"]
