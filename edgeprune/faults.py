"""Fault injection for the kill test (tests/test_reliability_kill.py); inert unless asked.

EDGEPRUNE_TEST_KILL_AT=<point> makes the process SIGKILL itself at that point: a step name
(after its outputs are written to the temp dir, before they are renamed into place) or
"publish" (after the final GGUF is copied to its temp name in --out, before the rename), or
"recover-step-N" (after step N of the recovery loop, and after its checkpoint when one is due).
SIGKILL, unlike an exception, runs no cleanup, so the test sees what a real kill leaves.
"""

from __future__ import annotations

import os
import signal

ENV = "EDGEPRUNE_TEST_KILL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
