"""Width pruning maths: head and MLP-channel importance, and which structures to keep.

Llama checkpoints need uniform shapes (one num_attention_heads, num_key_value_heads and
intermediate_size for every layer), so every choice below removes the same count in every layer;
*which* heads or channels go is decided per layer.

Head structure under GQA: query head h reads KV head h // group_size. Two legal cuts:
  * "groups":    remove whole KV groups (the KV head and its query heads);
  * "per-group": keep every KV head and remove the same number of query heads from each group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from edgeprune.errors import ConfigError
from edgeprune.registry import register

HeadMode = Literal["groups", "per-group"]


def head_contribution_sq(ctx: torch.Tensor, w_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Sum over tokens of ||ctx_h W_o[:, h]^T||^2 per head: the squared norm each head adds to the
    residual stream. ctx: (tokens, n_heads * head_dim), the input of o_proj."""
    hd = ctx.shape[-1] // n_heads
    c = ctx.reshape(-1, n_heads, hd).double()
    w = w_o.double().reshape(w_o.shape[0], n_heads, hd)
    out = torch.einsum("thd,ohd->tho", c, w)
    return (out ** 2).sum(dim=(0, 2))


def channel_contribution_sq(act: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of ||a_c W_down[:, c]||^2 per MLP channel; act: (tokens, intermediate)."""
    return (act.double() ** 2).sum(0) * (w_down.double() ** 2).sum(0)


def taylor_saliency(w: torch.Tensor, g: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """First-order Taylor |w * dL/dw| summed over slices of `size` rows (dim 0) or columns (dim 1)."""
    s = (w.double() * g.double()).abs()
    s = s if dim == 0 else s.T
    return s.reshape(-1, size, s.shape[1]).sum(dim=(1, 2))


def taylor_second_order(w: torch.Tensor, g: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """sum over slices of (w * dL_s/dw)^2 for ONE calibration sample s; summed over samples it is
    w^2 * diag(Fisher), LLM-Pruner's 'param_second' estimate of the loss increase of removing w.
    Why not |w * g| (param_first): at a trained minimum g is mostly noise, and the heads whose
    removal hurts most can have tiny gradients: on SmolLM2 (bench/methods_checks.py taylor) |w * g|
    removes layer 1's KV group whose removal alone costs +2.6 nats of calibration loss."""
    s = (w.double() * g.double()) ** 2
    s = s if dim == 0 else s.T
    return s.reshape(-1, size, s.shape[1]).sum(dim=(1, 2))


def _top(scores: torch.Tensor, n_keep: int) -> list[int]:
    """Indices of the n_keep largest scores, ascending (ties: the lower index wins)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n_keep])


def keep_kv_groups(head_scores: torch.Tensor, kv_scores: torch.Tensor, n_remove: int) -> list[list[int]]:
    """Per layer, the query heads to keep when the n_remove least important KV groups go.
    A group's score is its query heads' scores plus its KV head's own."""
    n_layers, n_heads = head_scores.shape
    n_kv = kv_scores.shape[1]
    if not 0 < n_remove < n_kv:
        raise ConfigError(f"cannot remove {n_remove} of {n_kv} KV groups", where="--fraction",
                          fix=f"remove 1..{n_kv - 1} groups (fraction of {n_kv} KV groups)")
    gs = n_heads // n_kv
    out = []
    for layer in range(n_layers):
        group = head_scores[layer].reshape(n_kv, gs).sum(1) + kv_scores[layer]
        out.append([g * gs + j for g in _top(group, n_kv - n_remove) for j in range(gs)])
    return out


def keep_heads_per_group(head_scores: torch.Tensor, n_kv: int, n_remove: int) -> list[list[int]]:
    """Per layer, the query heads to keep when n_remove heads go from every KV group."""
    n_layers, n_heads = head_scores.shape
    gs = n_heads // n_kv
    if not 0 <= n_remove < gs:
        raise ConfigError(f"cannot remove {n_remove} of the {gs} query heads of each KV group", where="--fraction",
                          fix=f"remove 0..{gs - 1} per group")
    out = []
    for layer in range(n_layers):
        per = head_scores[layer].reshape(n_kv, gs)
        out.append([g * gs + j for g in range(n_kv) for j in _top(per[g], gs - n_remove)])
    return out


def keep_channels(channel_scores: torch.Tensor, n_keep: int) -> list[list[int]]:
    return [_top(row, n_keep) for row in channel_scores]


def aligned_keep(total: int, fraction: float, align: int) -> int:
    """Channels kept when removing `fraction`, rounded to a multiple of `align` (llama.cpp quant
    blocks are 32 wide; an unaligned row cannot be block-quantized)."""
    keep = int(round(total * (1.0 - fraction) / align)) * align
    if not 0 < keep < total:
        raise ConfigError(f"removing {fraction:.0%} of {total} channels leaves {keep} (aligned to {align})",
                          where="--fraction", fix="choose a fraction that removes at least one aligned block")
    return keep


def coupled_counts(hidden: int, n_heads: int, n_kv: int, head_dim: int, inter: int, fraction: float,
                   align: int) -> tuple[int, int]:
    """(query heads removed per group, MLP channels kept) so a layer loses about `fraction` of its
    parameters: heads at round(fraction * group size) per group, MLP channels make up the rest."""
    gs = n_heads // n_kv
    per_group = min(gs - 1, int(round(fraction * gs)))
    layer = hidden * head_dim * (2 * n_heads + 2 * n_kv) + 3 * hidden * inter
    left = fraction * layer - per_group * n_kv * 2 * hidden * head_dim
    channels_removed = max(0.0, left / (3 * hidden))
    return per_group, aligned_keep(inter, channels_removed / inter, align) if channels_removed else inter


@dataclass(frozen=True)
class WidthMethod:
    name: str
    summary: str
    structures: tuple[str, ...]  # "heads", "ffn"
    importance: Literal["activation", "taylor"]


HEADS = register("width", "heads", family="width")(WidthMethod(
    "heads", "GQA-aware head pruning by head output norm (or --importance taylor); same count per layer",
    ("heads",), "activation"))
FFN = register("width", "ffn", family="width")(WidthMethod(
    "ffn", "MLP channel pruning (gate/up rows, down columns) by activation contribution (or taylor)",
    ("ffn",), "activation"))
TAYLOR = register("width", "taylor", family="width")(WidthMethod(
    "taylor", "LLM-Pruner-style coupled heads + MLP channels by second-order Taylor importance, "
              "sum over windows of (w * dL/dw)^2 on the calibration loss",
    ("heads", "ffn"), "taylor"))
