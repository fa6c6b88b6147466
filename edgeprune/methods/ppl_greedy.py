"""The costly reference: remove one layer at a time, the one whose removal raises the calibration
loss least, given the layers already removed. The search is a pure function of a loss oracle;
the scoring stage supplies the oracle (forward passes on calibration windows).
"""

from __future__ import annotations

from typing import Callable

import torch

from edgeprune.errors import ConfigError
from edgeprune.methods.depth import DepthMethod
from edgeprune.registry import register

# loss_without(removed_so_far, candidate) -> mean calibration NLL with removed_so_far | {candidate} gone
LossOracle = Callable[[frozenset, int], float]


def greedy_order(loss_without: LossOracle, n_layers: int, max_remove: int) -> torch.Tensor:
    """(n_layers, 3) float64: col 0 = loss with only layer l removed (the first scan, a per-layer
    score); col 1 = layer removed at step i (-1 past max_remove); col 2 = loss after step i."""
    out = torch.full((n_layers, 3), -1.0, dtype=torch.float64)
    removed: frozenset = frozenset()
    for step in range(min(max_remove, n_layers - 1)):
        losses = {j: loss_without(removed, j) for j in range(n_layers) if j not in removed}
        if step == 0:
            for j, loss in losses.items():
                out[j, 0] = loss
        best = min(losses, key=lambda j: (losses[j], j))
        out[step, 1], out[step, 2] = best, losses[best]
        removed = removed | {best}
    return out


def select_greedy(stats: torch.Tensor, k: int) -> list[int]:
    order = [int(x) for x in stats[:, 1] if x >= 0]
    if k > len(order):
        raise ConfigError(f"ppl-greedy was scored for at most {len(order)} removals, asked for {k}",
                          where="--remove", fix="rescore with a larger max_remove (costs one scan per layer)")
    return sorted(order[:k])


PPL_GREEDY = register("depth", "ppl-greedy", family="depth", costly=True)(
    DepthMethod(
        name="ppl-greedy",
        summary="Reference: greedily remove the layer whose removal raises calibration loss least (costly)",
        stats=greedy_order,
        select=select_greedy,
        layer_scores=lambda s: [float(x) for x in s[:, 0]],
        inputs="model",
    )
)
