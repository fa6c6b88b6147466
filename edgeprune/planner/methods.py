"""Which registered methods a plan runs, checked before anything loads.

* depth order: `--method` / recipe `depth.method`, any registered depth method;
* width importance: `--width-method` / recipe `width.method`, any registered width method, and it
  must cover the structures the search shrinks (its spec's `structures`; a method covering both
  shrinks them together). None runs the default method of each structure in turn (the specs
  marked `default`: heads by head output norm, then FFN by activation).

Sparsity methods are refused here: masks leave the GGUF as large and as slow in llama.cpp, so the
planner, which prunes for a speed / size budget, has nothing to gain from them.
"""

from __future__ import annotations

from edgeprune import registry
from edgeprune.config.recipe import Recipe
from edgeprune.errors import ConfigError
from edgeprune.methods.width import STRUCTURES, width_methods
from edgeprune.stages.prune_methods import method_kind

WIDTH_FLAGS = {"heads": "--heads-keep", "ffn": "--ffn-keep"}


def _sparsity_refusal(name: str, flag: str) -> ConfigError:
    return ConfigError(f"'{name}' is a sparsity method: llama.cpp stores and runs the masked weights dense, so the "
                       "GGUF gets no smaller or faster and the planner cannot use it", where=flag,
                       fix=f"prune with masks outside the planner: `edgeprune prune --method {name} --sparsity 0.5`")


def _check_kind(name: str, flag: str, own: str, role: str, other_use: str) -> None:
    """`name` must be a method of kind `own` for `flag`; say which flag takes it otherwise."""
    kind = method_kind(name, where=flag)  # unknown: did you mean, across every kind
    if kind == "sparsity":
        raise _sparsity_refusal(name, flag)
    if kind != own:
        raise ConfigError(f"'{name}' is a {kind} method; {flag} sets the {role}", where=flag,
                          fix=f"use {other_use}, and a {own} method ({', '.join(registry.names(own))}) for {flag}")


def check_depth_method(name: str, flag: str = "--method") -> None:
    _check_kind(name, flag, "depth", "depth order", f"--width-method {name} with --heads-keep / --ffn-keep")


def width_structures(name: str | None) -> tuple[str, ...]:
    covered = {s for m in width_methods(name) for s in m.structures}
    return tuple(s for s in STRUCTURES if s in covered)


def coupled(name: str | None) -> bool:
    """One method shrinks several structures together (a candidate cuts all of them or none)."""
    return any(len(m.structures) > 1 for m in width_methods(name))


def width_name(name: str | None) -> str:
    """What the manifest and the plan call the width methods: the recipe's, or the defaults joined."""
    return name or "+".join(m.name for m in width_methods(None))


def check_width_method(recipe: Recipe, flag: str = "--width-method") -> None:
    name = recipe.width.method
    if name is None:
        return
    _check_kind(name, flag, "width", "width importance", f"--method {name}")
    covered = width_structures(name)
    for structure, keep in (("heads", recipe.search.heads_keep), ("ffn", recipe.search.ffn_keep)):
        if structure not in covered and min(keep) < 1.0:
            raise ConfigError(f"width method '{name}' does not shrink {structure}, but {WIDTH_FLAGS[structure]} "
                              f"asks for {keep}", where=flag,
                              fix=f"drop {WIDTH_FLAGS[structure]}, or use a method that covers both (taylor)")


def resolve_methods(recipe: Recipe) -> Recipe:
    """Check the names; for a coupled method (taylor) given fractions for one structure only, the
    other follows the same fractions, so every width candidate shrinks heads and FFN together."""
    check_depth_method(recipe.depth.method)
    check_width_method(recipe)
    sr = recipe.search
    # the unpruned width is always measured first (the baseline), so it is always in the grid
    heads, ffn = sorted(set(sr.heads_keep) | {1.0}), sorted(set(sr.ffn_keep) | {1.0})
    if coupled(recipe.width.method):
        if min(ffn) >= 1.0:
            ffn = list(heads)
        elif min(heads) >= 1.0:
            heads = list(ffn)
    return recipe.model_copy(update={"search": sr.model_copy(update={"heads_keep": heads, "ffn_keep": ffn})})


def candidate_allowed(recipe: Recipe, heads: int | None, ffn: int | None) -> bool:
    """A width candidate the recipe's method can build: a coupled method shrinks both structures
    or neither; a single-structure method only its own."""
    name = recipe.width.method
    if name is None:
        return True
    covered = width_structures(name)
    if coupled(name):
        return (heads is None) == (ffn is None)
    return (heads is None or "heads" in covered) and (ffn is None or "ffn" in covered)


def width_label(recipe: Recipe) -> str:
    sr = recipe.search
    if min(sr.heads_keep + sr.ffn_keep) >= 1.0:
        return "none (no --heads-keep / --ffn-keep fraction below 1.0)"
    name = recipe.width.method
    if name is None:
        parts = " + ".join(f"{'+'.join(m.structures)} by {m.criterion}" for m in width_methods(None))
        return f"{parts} (default; --width-method picks one)"
    m = registry.get("width", name)
    what = " + ".join(m.structures)
    return f"{name} ({what}, {m.importance} importance{', one pass for both' if len(m.structures) > 1 else ''})"


def plan_methods(recipe: Recipe, decision) -> dict:
    """What the plan records (manifest plan.methods) and `--dry-run` prints about its methods;
    `decision`: the scoring StreamDecision (streaming/policy.py)."""
    from edgeprune.streaming.policy import width_stream_note

    sr = recipe.search
    width_on = min(sr.heads_keep + sr.ffn_keep) < 1.0
    lines = [f"methods: depth order by {recipe.depth.method}; width by {width_label(recipe)}",
             f"         {decision.line()}"]
    note = width_stream_note(width_methods(recipe.width.method), decision) if width_on else None
    if note:
        lines.append(f"         {note}")
    return {"depth": recipe.depth.method, "width": width_name(recipe.width.method) if width_on else None,
            "heads_keep": list(sr.heads_keep), "ffn_keep": list(sr.ffn_keep), "stream": decision.stream,
            "scoring": decision.reason, "lines": lines}
