"""A Plan is a value: what will run, on what, against which budget. `--dry-run` prints it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.config.recipe import Recipe
from edgeprune.config.target import Target
from edgeprune.errors import ConfigError
from edgeprune.planner.search import layer_cost_share


@dataclass
class Plan:
    model: Path
    target: Target
    recipe: Recipe
    out: Path
    model_config: dict | None = None
    steps: list[str] = field(default_factory=list)
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
        lines += [f"  {i + 1}. {s}" for i, s in enumerate(self.steps)]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The plan record: only what the inputs decide, so two identical plans compare equal."""
        return {"model": str(self.model), "target": self.target.model_dump(mode="json"),
                "recipe": self.recipe.model_dump(mode="json"), "out": str(self.out), "steps": self.steps,
                "methods": {k: v for k, v in self.methods.items() if k != "lines"}}


def make_plan(model: Path, target: Target, recipe: Recipe, out: Path, model_config: dict | None) -> Plan:
    q = recipe.export.quant
    steps = [
        "import: load the model, save a plain HF checkpoint (safetensors)",
        f"score: {recipe.depth.method} per layer on {recipe.calibration.samples} calibration windows "
        f"of {recipe.calibration.seq_len} tokens",
        f"baseline: export the unpruned model to F16 GGUF, verify logits, quantize to {q}",
        f"measure: benchmark on '{target.device.runner}' ({recipe.bench.repetitions} reps + {recipe.bench.warmup} "
        f"warm-up) and WikiText-2 perplexity ({recipe.quality.windows} x {recipe.quality.ctx} tokens)",
        f"iterate (at most {recipe.max_iterations}): predict size, RAM and speed of every candidate (layers "
        f"removed by the method's order x quant in {'/'.join(recipe.search.quant_choices())}"
        f"{' x heads/FFN width' if len(recipe.search.heads_keep + recipe.search.ffn_keep) > 2 else ''}) with the "
        f"target's calibrated cost model, run the best-quality one predicted to meet the budget, recalibrate on "
        f"its measurement; stop when the budget is met or nothing within the quality floor (ppl ratio <= "
        f"{target.budget.max_ppl_ratio}) and depth limit is predicted to meet it",
        "publish: final GGUF, manifest.json, bench.json, report.md",
    ]
    steps[-1:-1] = optional_steps(recipe)
    plan = Plan(model, target, recipe, out, model_config, steps)
    if plan.num_layers is not None and plan.num_layers < 2 and _has_speed_budget(target):
        raise ConfigError(f"model has {plan.num_layers} layer(s); depth pruning needs at least 2",
                          where=str(model), fix="use a deeper model")
    return plan


def optional_steps(recipe: Recipe) -> list[str]:
    """Plan lines for the recipe's optional stages (measure() recovers; execute() evaluates)."""
    out = []
    if recipe.quality.kld:
        out.append("kld: every measured GGUF vs the unpruned HF model on the perplexity windows")
    if recipe.heal is not None:
        h = recipe.heal
        local = f", then {h.local_minutes:g} min of layer-local distillation" if h.local_minutes else ""
        if h.global_minutes:
            local += (f", then {h.global_minutes:g} min of top-{h.topk} distillation ({h.global_layers} layers) on "
                      f"{h.calibration.samples + h.global_samples} windows")
        out.append(f"heal (every pruned candidate, before its export): {h.method} on {h.calibration.samples} "
                   f"calibration windows of {h.calibration.seq_len} tokens, kept only if {h.holdout_samples} "
                   f"held-out windows improve{local}")
    if recipe.recovery is not None:
        rc, t = recipe.recovery, recipe.recovery.train
        budget = ", ".join(f"{v} {k}" for k in ("minutes", "steps", "epochs") if (v := getattr(t, k)) is not None)
        out.append(f"recover (every pruned candidate, before its export): {rc.mode} on {rc.data.source}, "
                   f"LoRA r{rc.lora.rank}, lr {t.lr}, budget {budget}")
    if recipe.evaluate is not None:
        ev = recipe.evaluate
        items = f"first {ev.limit} items" if ev.limit else "full sets"
        parent = " and the unpruned baseline (paired CIs)" if ev.compare_parent else ""
        out.append(f"evaluate: lm-eval {', '.join(ev.tasks)} ({items}) on the delivered GGUF{parent}")
    return out


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
