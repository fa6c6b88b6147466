"""Training-free healing maths: closed-form refits of a linear projection on calibration data.

Pure functions of tensors. The plumbing that runs the teacher and the pruned student, hooks the
projections' inputs and folds the solution back into the weights lives in stages/heal.py.

A projection y = W x (W: out x in) is refitted to a target Y from the inputs X it actually sees
in the pruned model:

    W* = argmin_W  sum_t w_t ||Y_t - W X_t||^2  +  lam ||W - W0||^2

solved in closed form from the normal equations (float64). The ridge pulls towards the original
weights, so a direction the calibration data never excites keeps its old behaviour.

Objectives (token weights w_t):
  * "l2":       w_t = 1. On SmolLM2 a few residual channels are huge on a few tokens (the
                attention-sink positions), so plain L2 spends the whole fit on those tokens.
  * "relative": w_t = 1 / ||target residual stream at t||^2, i.e. each token's error is measured
                relative to its own scale, which is what the next RMSNorm sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from edgeprune.registry import register

Objective = Literal["l2", "relative"]


@dataclass
class NormalEquations:
    """Running sums X^T W X and X^T W Y over calibration batches, in float64."""

    d_in: int
    d_out: int
    device: torch.device | str = "cpu"  # where the activations live: no host round trip on a GPU
    xtx: torch.Tensor = field(init=False)
    xty: torch.Tensor = field(init=False)
    weight: float = 0.0

    def __post_init__(self) -> None:
        self.xtx = torch.zeros(self.d_in, self.d_in, dtype=torch.float64, device=self.device)
        self.xty = torch.zeros(self.d_in, self.d_out, dtype=torch.float64, device=self.device)

    def add(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> None:
        """x: (tokens, d_in), y: (tokens, d_out), w: (tokens,) token weights or None for 1."""
        x, y = x.reshape(-1, self.d_in).double(), y.reshape(-1, self.d_out).double()
        xw = x if w is None else x * w.reshape(-1, 1).double()
        self.xtx += xw.T @ x
        self.xty += xw.T @ y
        self.weight += float(x.shape[0] if w is None else w.double().sum())

    def solve(self, w0: torch.Tensor, damp: float) -> torch.Tensor:
        """W (d_out, d_in) minimising the weighted error + lam ||W - W0||^2, lam = damp * mean diag."""
        lam = damp * float(self.xtx.diagonal().mean().clamp_min(1e-30))
        a = self.xtx + lam * torch.eye(self.d_in, dtype=torch.float64, device=self.xtx.device)
        b = self.xty + lam * w0.to(self.xtx.device).double().T
        return torch.linalg.solve(a, b).T.contiguous()


def token_weights(reference: torch.Tensor, objective: Objective) -> torch.Tensor | None:
    """Per-token weights for `objective`; `reference` (tokens, hidden) is the target residual stream."""
    if objective == "l2":
        return None
    norms = reference.reshape(-1, reference.shape[-1]).double().pow(2).sum(-1)
    return 1.0 / norms.clamp_min(1e-12)


def residual_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over tokens of ||pred - target|| / ||target||: the fit's quality in the units RMSNorm sees."""
    p, t = pred.reshape(-1, pred.shape[-1]).double(), target.reshape(-1, target.shape[-1]).double()
    return float(((p - t).norm(dim=-1) / t.norm(dim=-1).clamp_min(1e-12)).mean())


# --- registered healing methods -------------------------------------------------------------

Scope = Literal["cut", "all"]
Fit = Literal["map", "down"]


@dataclass(frozen=True)
class HealMethod:
    """A training-free healer.

    fit:   "map"  ReplaceMe-style: a hidden x hidden linear map M on the MLP output of the layer
                  before each cut, folded as W_down <- M W_down;
           "down" refit down_proj itself on its (intermediate-size) input: more freedom than "map".
    scope: "cut"  only the layer before each removed run (and, for width, the pruned projections);
           "all"  every kept layer from the first change on, in order, each fitted to the teacher's
                  residual stream at its depth on the inputs the healed layers before it produce.
    o_proj: also refit o_proj on the kept heads (width pruning of heads; scope "all") and in the
           layers that `after` and `tail` add.
    after: with scope "cut", also the `after` kept layers following each cut, each fitted to the
           teacher's state at its depth: they mop up what the cut layer's fit left.
    tail:  also the last `tail` kept layers, the last one fitted to the teacher's final state (what
           the LM head reads).
    cut_attention: also refit o_proj of the layer before each cut so that its attention lands on the
           teacher's post-attention state of the last removed layer; the MLP then finishes the run.
    samples: the fewest fitting windows (of the heal calibration's length) the method is fitted on:
           refitting many layers from 32 x 512 tokens overfits (bench/README.md, Healing sweep).
    """

    name: str
    summary: str
    fit: Fit
    objective: Objective
    scope: Scope
    o_proj: bool = False
    damp: float = 1e-2
    after: int = 0
    tail: int = 0
    cut_attention: bool = False
    samples: int = 0

    def extra_layers(self, cuts: list[int], n_layers: int) -> set[int]:
        """Student layers refitted beyond the cut layers themselves (scope "all" aside)."""
        extra = {k + i for k in cuts for i in range(1, self.after + 1)}
        if cuts:  # nothing removed: nothing to mop up
            extra |= set(range(max(min(cuts) + 1, n_layers - self.tail), n_layers))
        return {k for k in extra if k < n_layers} - set(cuts)


def _heal(name: str, summary: str, **facts) -> HealMethod:
    return register("heal", name, family="heal")(HealMethod(name=name, summary=summary, **facts))


_heal("replaceme", "ReplaceMe-style linear map on the MLP output before each cut, L2, folded into down_proj",
      fit="map", objective="l2", scope="cut")
_heal("replaceme-relative", "the same map fitted with each token's error relative to its scale",
      fit="map", objective="relative", scope="cut")
_heal("down-cut", "down_proj of the layer before each cut refitted to the teacher's state after the cut "
      "(relative error)", fit="down", objective="relative", scope="cut", damp=0.1)
_heal("down-all", "every kept layer's down_proj (and o_proj after head pruning) refitted in order to the "
      "teacher's residual stream at its depth (relative error)", fit="down", objective="relative", scope="all",
      o_proj=True)
_heal("down-all-l2", "down-all with plain L2 error", fit="down", objective="l2", scope="all", o_proj=True)
# The sweep's winner on SmolLM2 -6 (bench/heal_sweep.py): WikiText-2 44.2 vs down-cut's 48.5 on the same
# block; the layers after the cut absorb what one layer's fit leaves. 6, 8 and 11 layers after were
# within 1 %; on 32 fitting windows it is worse than down-cut (49.5), on 256 it is the best.
_heal("down-span", "down_proj and o_proj of the layer before each cut and of the 8 kept layers after it, "
      "refitted in order to the teacher's states (relative error), on >= 256 fitting windows",
      fit="down", objective="relative", scope="cut", damp=0.1, after=8, o_proj=True, samples=256)
