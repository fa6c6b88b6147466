"""Glue between the CLI and the planner: resolve inputs, build the plan, run, publish."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgeprune.config.loader import load_recipe
from edgeprune.config.recipe import Recipe
from edgeprune.data.texts import read_texts
from edgeprune.planner.execute import execute
from edgeprune.planner.methods import plan_methods, resolve_methods
from edgeprune.planner.plan import Plan, make_plan, read_model_config
from edgeprune.planner.publish import out_lock, prepare_out, publish
from edgeprune.planner.steps import steps_from
from edgeprune.config.checks import check_budget_fits_model
from edgeprune.devices.reachability import check_ssh_reachable
from edgeprune.devices.runners import check_runner_arch, runner_spec
from edgeprune.atomic import clear_stale_temps
from edgeprune.store import StepStore
from edgeprune.store.resume import clear_run_calibration, merge_run_calibration
from edgeprune.store.step_store import store_root
from edgeprune.streaming.policy import decide_stream, weight_bytes
from edgeprune.targets.calibration import calibration_path
from edgeprune.targets import load_target
from edgeprune.toolchain.hf import resolve_model


def build_plan(model: str | None, target: str, recipe: str, out: str | None, target_overrides: dict,
               recipe_overrides: dict, flags: dict[str, str] | None = None, allow_pickle: bool = False,
               recipe_flags: dict[str, str] | None = None) -> Plan:
    """`flags`, `recipe_flags`: which command-line flag set each override, so an error names the flag."""
    t = load_target(target, target_overrides, flags)
    r = resolve_methods(load_recipe(recipe, recipe_overrides, recipe_flags))
    for text_file in (r.calibration.path, r.quality.path):
        if text_file:  # empty, non-UTF-8 or malformed text fails here, before any step runs
            read_texts(Path(text_file))
    check_recipe_stages(r)
    if runner_spec(t.device.runner).remote:
        check_ssh_reachable(t.device.ssh_host, t.device.ssh_port, t.device.connect_timeout_s)
    model_path = resolve_model(model, allow_pickle)
    model_config = read_model_config(model_path)
    check_budget_fits_model(t.budget, model_config, where=f"target '{t.name}' budget")
    out_dir = Path(out) if out else Path("runs") / f"{t.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = make_plan(model_path, t, r, out_dir, model_config)
    plan.allow_pickle = allow_pickle
    weights = weight_bytes(model_path, model_config) if r.calibration.stream is None else 0  # auto needs it
    scoring = decide_stream(r.calibration.stream, r.depth.method, weights)
    plan.methods = plan_methods(r, scoring)
    plan.environment = {"stream_decision": scoring.environment} if scoring.environment else {}
    return plan


def check_recipe_stages(r: Recipe) -> None:
    """A recovery without a budget or an unknown evaluate task fails before any step runs."""
    if r.recovery is not None:
        from edgeprune.stages.recover import check_budget

        check_budget(r.recovery, "recipe recovery.train")
    if r.evaluate is not None:
        from edgeprune.stages.evaluate import check_tasks

        check_tasks(r.evaluate)


def run_plan(plan: Plan, store: str | None, force: bool, log=print, redo_from: str | None = None,
             console=None) -> dict:
    """`force` rebuilds every step; `redo_from` rebuilds that stage and the later ones. `console`
    (report/console.py) takes the planner's lines and draws one line per step; without it every
    line goes to `log`. A run that fails before publishing removes the --out folder it created (and
    the empty parents it created, such as runs/)."""
    if console is not None:
        log = console.say
    foreign = check_runner_arch(plan.target.device.runner, plan.target.device)  # exit 2 before any work
    if foreign:
        log(f"note: {foreign} (--allow-foreign-arch); every number is labelled so")
    created = [d for d in (plan.out, *plan.out.parents) if not d.exists()]  # innermost first
    prepare_out(plan.out)
    started = time.time()
    try:
        with out_lock(plan.out):
            for stale in clear_stale_temps(plan.out):
                log(f"removed {stale.name}, left by a killed run")
            steps = StepStore(store_root(store), force=force, redo=steps_from(redo_from),
                              echo=console.echo if console is not None else log, observer=console)
            state = execute(plan, steps, log=log)
            shared = state.shared_calibration or calibration_path(plan.target.name, plan.target.device.runner)
            merge_run_calibration(plan.out, shared)
            manifest = publish(state, started)
            clear_run_calibration(plan.out)
            return manifest
    except Exception:
        if created:
            remove_unfinished_out(plan.out, created[1:])
        raise


def remove_unfinished_out(out: Path, parents: list[Path]) -> None:
    """The --out folder a failed run created, unless it holds a manifest (then it published), and
    the parents it created for it while they are empty."""
    if out.is_dir() and not (out / "manifest.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        for parent in parents:
            try:
                parent.rmdir()  # only an empty folder goes
            except OSError:
                break
