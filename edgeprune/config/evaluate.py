"""The planner's evaluate stage (`evaluate:` in recipes/*.yaml): zero-shot tasks on the delivered GGUF."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, PositiveInt

from edgeprune.config.strict import Strict


class Evaluate(Strict):
    model_config = ConfigDict(strict=True)  # merged with Strict's: unknown keys still fail

    # lm-eval task names from edgeprune's offline YAMLs (edgeprune/evaluation/tasks), e.g. arc_easy,
    # hellaswag, mmlu_subfields; checked against the task index when the plan is built.
    tasks: list[str] = Field(min_length=1)
    limit: PositiveInt | None = None  # first N items per task (per subject for MMLU); None: full sets
    # Also score the unpruned baseline GGUF on the same items, so each accuracy comes with a paired
    # bootstrap CI of the difference; costs as much again.
    compare_parent: bool = True
    data_dir: Path | None = Field(None, strict=False)  # None: the shared data folder
