"""Depth-pruning scores: pure functions of hidden states, no hooks or devices here.

`hiddens` is the list [h_0, ..., h_L] of a calibration batch flattened to (tokens, hidden):
h_l is the input of decoder layer l and h_L the output of the last layer (before the final norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from edgeprune.registry import register


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float64 (float32 loses the 1 - cos ~ 1e-4 signal)."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def block_influence(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """ShortGPT BI = mean over tokens of 1 - cos(x_in, x_out). 0: the block changes nothing."""
    return (1.0 - cosine(h_in, h_out)).mean()


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gromov et al.: arccos(cos)/pi, averaged over rows; in [0, 1]."""
    return (torch.arccos(cosine(a, b).clamp(-1.0, 1.0)) / math.pi).mean()


# What the scoring stage feeds to `stats`:
#   "hiddens":    [h_0..h_L] of one batch, every token, each (tokens, hidden);
#   "last-token": the same list restricted to the last token of every window (Gromov et al.);
#   "attention":  [(h_l, attn_l)] per layer: the layer input and its attention sublayer's output;
#   "model":      stats(loss_without, n_layers, max_remove): the method drives a loss oracle
#                 (ppl-greedy), run once on the whole calibration set instead of per batch.
DepthInputs = Literal["hiddens", "last-token", "attention", "model"]


@dataclass(frozen=True)
class DepthMethod:
    """`stats` maps one batch's inputs to a tensor averaged over batches; `select` picks layers."""

    name: str
    summary: str
    stats: Callable[..., torch.Tensor]
    select: Callable[[torch.Tensor, int], list[int]]
    layer_scores: Callable[[torch.Tensor], list[float]]
    inputs: DepthInputs = "hiddens"


def _bi_stats(hiddens: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([block_influence(hiddens[i], hiddens[i + 1]) for i in range(len(hiddens) - 1)])


def lowest_k(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k smallest scores (ties broken by the lower index, so it is deterministic)."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:k])


BLOCK_INFLUENCE = register("depth", "block-influence", family="depth")(
    DepthMethod(
        name="block-influence",
        summary="ShortGPT Block Influence 1 - cos(in, out) per layer; remove the k lowest",
        stats=_bi_stats,
        select=lowest_k,
        layer_scores=lambda s: [float(x) for x in s],
    )
)
