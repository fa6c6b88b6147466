"""Plan.steps is what executes: every step a plan lists has a runner (planner/execute.py RUN_STEPS, planner/measure.py CANDIDATE_STEPS), and the step
names are the step store's stages that `--from` rebuilds."""

import pytest

from edgeprune.config.loader import load_recipe
from edgeprune.planner.execute import RUN_STEPS
from edgeprune.planner.measure import CANDIDATE_STEPS
from edgeprune.planner.steps import STEP_ORDER, plan_steps, steps_from
from edgeprune.targets import load_target


@pytest.mark.parametrize("recipe", ["quick", "default", "recover-cpu"])
def test_every_planned_step_has_a_runner(recipe):
    r = load_recipe(recipe, {})
    steps = plan_steps(r, load_target("host", {}))
    for s in steps:
        assert s.name in (CANDIDATE_STEPS if s.per_candidate else RUN_STEPS), s.name
        assert s.name == "search" or s.name in STEP_ORDER
    names = [s.name for s in steps if s.per_candidate]
    assert names == sorted(names, key=STEP_ORDER.index)  # candidate steps run in pipeline order
    assert names[:1] == ["prune"] and "export" in names and names[-1] in ("ppl", "kld")


def test_optional_steps_follow_the_recipe():
    r = load_recipe("quick", {})
    names = {s.name for s in plan_steps(r, load_target("host", {}))}
    assert "heal" in names and "width" not in names and "kld" not in names and "recover" not in names
    wide = r.model_copy(update={"search": r.search.model_copy(update={"heads_keep": [1.0, 0.67]})})
    assert "width" in {s.name for s in plan_steps(wide, load_target("host", {}))}


def test_from_rebuilds_a_step_and_every_later_one():
    assert steps_from("export") == {"export", "bench", "ppl", "kld", "tasks"}
    assert steps_from(None) == set()
