"""Validation of pruning requests and budgets that pydantic field types cannot express.

Shared by the CLI, the planner and the width/recovery stages, so a bad request fails before
any model is loaded, with the same one-line message wherever it comes from.
"""

from __future__ import annotations

from edgeprune.errors import BudgetError, ConfigError


def check_head_pruning(num_heads: int, num_kv_heads: int, remove_heads: int, where: str = "--remove-heads") -> int:
    """Heads left after removing `remove_heads` query heads must keep grouped-query attention
    whole: every KV head serves the same number of query heads. Returns the heads kept."""
    if remove_heads < 0:
        raise ConfigError(f"cannot remove {remove_heads} heads", where=where, fix="give a count >= 0")
    kept = num_heads - remove_heads
    if kept < num_kv_heads:
        raise ConfigError(f"removing {remove_heads} of {num_heads} heads leaves {kept}, fewer than the "
                          f"{num_kv_heads} KV heads", where=where,
                          fix=f"remove at most {num_heads - num_kv_heads} heads (one query head per KV head)")
    if kept % num_kv_heads:
        ok = [r for r in range(0, num_heads - num_kv_heads + 1) if (num_heads - r) % num_kv_heads == 0]
        raise ConfigError(f"removing {remove_heads} of {num_heads} heads leaves {kept}, not a multiple of the "
                          f"{num_kv_heads} KV heads (grouped-query attention)", where=where,
                          fix=f"remove one of {ok} heads (whole groups of {num_heads // num_kv_heads})")
    return kept


def check_layer_count(num_layers: int, remove: int, where: str = "--remove") -> int:
    if remove < 1:
        raise ConfigError(f"--remove must be >= 1, got {remove}", where=where, fix="give a positive count")
    if remove >= num_layers:
        what = "all" if remove == num_layers else f"{remove}, more than the"
        raise ConfigError(f"cannot remove {what} {num_layers} layers", where=where,
                          fix=f"remove at most {num_layers - 1} (at least one decoder layer must stay)")
    return num_layers - remove


def check_budget_fits_model(budget, model_config: dict | None, where: str) -> None:
    """A prompt + answer longer than the model's context can never be benchmarked."""
    ctx = (model_config or {}).get("max_position_embeddings")
    need = budget.prompt_tokens + budget.answer_tokens
    if ctx and need > ctx:
        raise BudgetError(f"budget asks for {budget.prompt_tokens} prompt + {budget.answer_tokens} answer = {need} "
                          f"tokens, but the model's context is {ctx}", where=where,
                          fix=f"lower budget.prompt_tokens/answer_tokens (--prompt-tokens/--tokens) to fit {ctx}")
