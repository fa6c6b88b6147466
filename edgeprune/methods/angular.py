"""Gromov et al. (2024), "The Unreasonable Ineffectiveness of the Deeper Layers": remove the
contiguous block of n layers whose input and output are closest in angle, on the last token.

Stats are the full (L+1) x (L+1) matrix d[i, j] = arccos(cos(h_i, h_j)) / pi of one collection of
hidden states, so a single scoring pass answers every block size n.
"""

from __future__ import annotations

import torch

from edgeprune.errors import ConfigError
from edgeprune.methods.depth import DepthMethod, angular_distance
from edgeprune.registry import register


def angular_matrix(hiddens: list[torch.Tensor]) -> torch.Tensor:
    """d[i, j] = mean angular distance between h_i and h_j (symmetric, zero diagonal), float64."""
    n = len(hiddens)
    d = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = angular_distance(hiddens[i], hiddens[j])
    return d


def best_block(dist: torch.Tensor, n: int) -> list[int]:
    """Layers l*..l*+n-1 with l* = argmin_l d[l, l+n]; ties go to the lower l (deterministic)."""
    n_layers = dist.shape[0] - 1
    if not 1 <= n < n_layers:
        raise ConfigError(f"cannot remove a block of {n} layers from {n_layers}", where="--remove",
                          fix=f"give 1..{n_layers - 1}")
    costs = [float(dist[start, start + n]) for start in range(n_layers - n + 1)]
    start = min(range(len(costs)), key=lambda s: (costs[s], s))
    return list(range(start, start + n))


ANGULAR = register("depth", "angular", family="depth")(
    DepthMethod(
        name="angular",
        summary="Gromov et al. angular distance arccos(cos)/pi on the last token; remove the best contiguous block",
        stats=angular_matrix,
        select=best_block,
        layer_scores=lambda d: [float(d[i, i + 1]) for i in range(d.shape[0] - 1)],
        inputs="last-token",
    )
)
