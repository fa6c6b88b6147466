"""Glue between the CLI and the planner: resolve inputs, build the plan, run, publish."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeprune.config.loader import load_yaml_model
from edgeprune.config.recipe import Recipe
from edgeprune.errors import ConfigError
from edgeprune.paths import cache_dir, repo_dir
from edgeprune.planner.execute import execute
from edgeprune.planner.plan import Plan, make_plan, read_model_config
from edgeprune.planner.publish import out_lock, prepare_out, publish
from edgeprune.runner import StepStore
from edgeprune.targets import load_target
from edgeprune.toolchain.hf import resolve_model


def load_recipe(name_or_path: str, overrides: dict | None = None) -> Recipe:
    path = Path(name_or_path)
    if not path.suffix:
        path = repo_dir("recipes") / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in repo_dir("recipes").glob("*.yaml"))
            raise ConfigError(f"unknown recipe '{name_or_path}'", where="--recipe", fix=f"choose one of {', '.join(known)}")
    return load_yaml_model(path, Recipe, overrides)


def build_plan(model: str | None, target: str, recipe: str, out: str | None, target_overrides: dict,
               recipe_overrides: dict) -> Plan:
    t = load_target(target, target_overrides)
    r = load_recipe(recipe, recipe_overrides)
    from edgeprune import registry

    registry.get("depth", r.depth.method)
    model_path = resolve_model(model)
    out_dir = Path(out) if out else Path("runs") / f"{t.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return make_plan(model_path, t, r, out_dir, read_model_config(model_path))


def store_root(store: str | None) -> Path:
    return Path(store or os.environ.get("EDGEPRUNE_STORE") or cache_dir() / "steps")


def run_plan(plan: Plan, store: str | None, force: bool, log=print) -> dict:
    prepare_out(plan.out)
    started = time.time()
    with out_lock(plan.out):
        state = execute(plan, StepStore(store_root(store), force=force), log=log)
        return publish(state, started)
