"""Remove attention heads from a Llama-family model, keeping a standard checkpoint (GQA-aware)."""

from __future__ import annotations

import torch

from edgeprune.errors import ConfigError


def slice_linear(lin: torch.nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    """In place: keep only the given output rows / input columns (bias follows the rows)."""
    w = lin.weight.data
    if rows is not None:
        w = w[rows]
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(lin.bias.data[rows].clone())
    if cols is not None:
        w = w[:, cols]
    lin.weight = torch.nn.Parameter(w.clone(), requires_grad=lin.weight.requires_grad)
    lin.out_features, lin.in_features = w.shape


def _groups_kept(heads: list[int], group_size: int) -> tuple[list[int], int]:
    """KV groups touched by the kept query heads and the heads kept per group (must be equal)."""
    per: dict[int, int] = {}
    for h in heads:
        per[h // group_size] = per.get(h // group_size, 0) + 1
    counts = set(per.values())
    if len(counts) != 1:
        raise ConfigError(f"kept heads {heads} keep unequal numbers per KV group {per}", where="head surgery",
                          fix="keep the same number of query heads in every kept group")
    return sorted(per), counts.pop()


def _rows(units: list[int], size: int) -> torch.Tensor:
    return torch.tensor([u * size + i for u in units for i in range(size)])


def keep_heads(model, keep: list[list[int]]):
    """In place; keep[l] = query heads kept in layer l. Same shape in every layer (llama config)."""
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    gs = n_heads // n_kv
    if len(keep) != len(model.model.layers):
        raise ConfigError(f"{len(keep)} head lists for {len(model.model.layers)} layers", where="head surgery",
                          fix="give one list per layer")
    shapes = set()
    for layer, heads in zip(model.model.layers, keep):
        heads = sorted(heads)
        if not heads or heads[-1] >= n_heads or heads[0] < 0:
            raise ConfigError(f"head indices {heads} out of range 0..{n_heads - 1}", where="head surgery",
                              fix="keep at least one valid head per layer")
        groups, per = _groups_kept(heads, gs)
        shapes.add((len(groups), per))
        attn = layer.self_attn
        q_rows, kv_rows = _rows(heads, hd), _rows(groups, hd)
        slice_linear(attn.q_proj, rows=q_rows)
        slice_linear(attn.k_proj, rows=kv_rows)
        slice_linear(attn.v_proj, rows=kv_rows)
        slice_linear(attn.o_proj, cols=q_rows)
        attn.num_key_value_groups = per  # query heads per KV head, read by repeat_kv / SDPA
    if len(shapes) != 1:
        raise ConfigError(f"layers would get different head shapes {sorted(shapes)}", where="head surgery",
                          fix="remove the same number of groups / heads per group in every layer")
    n_groups, per = shapes.pop()
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = n_groups * per, n_groups, hd
    return model
