"""A Plan is a value: what will run, on what, against which budget. `--dry-run` prints it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.config.recipe import Recipe
from edgeprune.config.target import Target
from edgeprune.errors import ConfigError
from edgeprune.planner.search import layer_cost_share
from edgeprune.planner.steps import Step, plan_steps


@dataclass
class Plan:
    model: Path
    target: Target
    recipe: Recipe
    out: Path
    model_config: dict | None = None
    steps: list[Step] = field(default_factory=list)  # what execute() runs, in order (planner/steps.py)
    allow_pickle: bool = False  # --allow-pickle: the import stage may load .bin weights
    methods: dict = field(default_factory=dict)  # names and the scoring decision (planner/methods.py)
    # What this machine had when planning (free RAM behind the stream decision): it differs between
    # two runs of one plan, so it stays out of to_dict() and goes to the manifest's "environment".
    environment: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int | None:
        return (self.model_config or {}).get("num_hidden_layers")

    @property
    def max_removed(self) -> int | None:
        n = self.num_layers
        return None if n is None else max(0, min(n - 1, int(n * self.recipe.depth.max_removed_fraction)))

    def describe(self) -> str:
        b = self.target.budget
        lines = [f"model:   {self.model}", f"target:  {self.target.name} ({self.target.device.description})",
                 f"runner:  {self.target.device.runner}, threads={self.target.device.threads or 'all'}",
                 "budget:  " + ", ".join(f"{k}={v}" for k, v in b.model_dump().items() if v is not None),
                 f"recipe:  {self.recipe.name} (depth={self.recipe.depth.method}, quant={self.recipe.export.quant})",
                 f"out:     {self.out}"]
        lines += self.methods.get("lines", [])
        if self.num_layers:
            lines.append(f"layers:  {self.num_layers} (at most {self.max_removed} may be removed; "
                         f"one layer ~ {100 * layer_cost_share(self.model_config):.1f} % of per-token weights)")
        lines.append("steps:")
        first_candidate_step = next((i for i, s in enumerate(self.steps) if s.per_candidate), None)
        for i, s in enumerate(self.steps):
            if i == first_candidate_step:
                lines.append("  for the baseline and every candidate the search measures:")
            lines.append(f"{'     ' if s.per_candidate else '  '}{i + 1}. {s.line()}")
        lines.append(f"  then publish: the delivered GGUF, manifest.json, bench.json, report.md in {self.out}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The plan record: only what the inputs decide, so two identical plans compare equal."""
        return {"model": str(self.model), "target": self.target.model_dump(mode="json"),
                "recipe": self.recipe.model_dump(mode="json"), "out": str(self.out),
                "steps": [s.line() for s in self.steps],
                "methods": {k: v for k, v in self.methods.items() if k != "lines"}}


def make_plan(model: Path, target: Target, recipe: Recipe, out: Path, model_config: dict | None) -> Plan:
    plan = Plan(model, target, recipe, out, model_config, plan_steps(recipe, target))
    if plan.num_layers is not None and plan.num_layers < 2 and _has_speed_budget(target):
        raise ConfigError(f"model has {plan.num_layers} layer(s); depth pruning needs at least 2",
                          where=str(model), fix="use a deeper model")
    return plan


def _has_speed_budget(target: Target) -> bool:
    b = target.budget
    return any(v is not None for v in (b.latency_s, b.latency_fraction, b.decode_tps, b.max_ram_gb,
                                         b.max_file_gb))


def read_model_config(model: Path) -> dict | None:
    """config.json of a HF folder, or the equivalent facts from a GGUF header."""
    if model.is_dir():
        return json.loads((model / "config.json").read_text())
    from edgeprune.toolchain.llamacpp import gguf_metadata

    meta = gguf_metadata(model)
    return {"num_hidden_layers": meta.get("llama.block_count"), "hidden_size": meta.get("llama.embedding_length"),
            "num_attention_heads": meta.get("llama.attention.head_count"),
            "num_key_value_heads": meta.get("llama.attention.head_count_kv"),
            "intermediate_size": meta.get("llama.feed_forward_length"), "vocab_size": meta.get("vocab_size")}
