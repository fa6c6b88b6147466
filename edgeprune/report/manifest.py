"""manifest.json: everything that made the artifact, and whether the budget was met."""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edgeprune import __version__
from edgeprune.atomic import atomic_write_text

SCHEMA = "edgeprune.manifest/1"  # the layout of manifest.json; its entries are report/records.py's to_dict()
PACKAGES = ("torch", "transformers", "peft", "trl", "llama-cpp-python", "gguf", "lm-eval", "numpy", "pydantic")


def versions() -> dict:
    from edgeprune.store.step_store import code_fingerprint

    out = {"edgeprune": __version__, "edgeprune_code": code_fingerprint(), "python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def build_manifest(state, model_hash: str, wall_s: float, artifact: Path | None) -> dict:
    """`state`: the planner's RunState (planner/execute.py): plan, typed records (report/records.py), step log."""
    from edgeprune.devices.runners import host_info
    from edgeprune.toolchain.llamacpp import build_info

    plan, outcome = state.plan, state.outcome
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "plan": plan.to_dict(),
        "inputs": {"model": str(plan.model), "model_sha256": model_hash, "model_config": plan.model_config},
        "versions": versions(),
        "llama_cpp": build_info(),
        "host": host_info() | {"platform": platform.platform()},
        "environment": plan.environment,  # volatile facts behind the plan's decisions, not in "plan"
        "depth_scores": {"method": plan.recipe.depth.method, "per_layer": state.scores},
        "iterations": [it.to_dict() for it in state.iterations],
        "search": [entry.to_dict() for entry in state.search_log],  # every decision: front + choice, all predicted
        "budget": plan.target.budget.model_dump(),
        "result": outcome.to_dict() | {"artifact": artifact.name if artifact else None,
                                       "measured_vs_required": outcome.final.checks if outcome.final else None},
        "recovery": delivered_recovery(state),
        "evaluation": getattr(state, "evaluation", None) or None,
        "steps": state.store.log,
        "wall_time_s": round(wall_s, 1),
    }


def delivered_recovery(state) -> dict | None:
    """The recovery record of the delivered iteration (the last measured one when the budget was missed)."""
    final = state.outcome.final or (state.iterations[-1] if state.iterations else None)
    return final.measured.recovery if final else None


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))
