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
from typing import Callable, Literal

import torch

from edgeprune import registry
from edgeprune.errors import ConfigError
from edgeprune.registry import register

HeadMode = Literal["groups", "per-group"]
STRUCTURES = ("heads", "ffn")  # what a Llama layer can lose in width, in the order defaults apply
ALIGN = 32  # llama.cpp quant blocks are 32 wide: an FFN width off this grid cannot be block-quantized


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
class WidthShape:
    """The per-layer shapes a width decision works on (every layer shares them)."""

    n_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    inter: int
    hidden: int

    @classmethod
    def of(cls, cfg) -> WidthShape:
        """From a transformers config or a config.json dict."""
        get = cfg.get if isinstance(cfg, dict) else (lambda key: getattr(cfg, key, None))
        n_heads = get("num_attention_heads")
        return cls(n_layers=get("num_hidden_layers"), n_heads=n_heads, n_kv=get("num_key_value_heads") or n_heads,
                   head_dim=get("head_dim") or get("hidden_size") // n_heads, inter=get("intermediate_size"),
                   hidden=get("hidden_size"))

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv


@dataclass(frozen=True)
class WidthCut:
    """What a width decision removes, known from the shapes alone (before any scoring): `heads` is
    ("groups", KV groups removed) or ("per-group", query heads removed from every group) or None;
    `ffn_keep` the MLP channels kept per layer, or None for all."""

    heads: tuple[HeadMode, int] | None = None
    ffn_keep: int | None = None

    def kept_heads(self, shape: WidthShape) -> tuple[int, int]:
        """(query heads, KV heads) after the cut."""
        if self.heads is None:
            return shape.n_heads, shape.n_kv
        mode, n = self.heads
        if mode == "groups":
            return shape.n_heads - n * shape.group_size, shape.n_kv - n
        return shape.n_heads - n * shape.n_kv, shape.n_kv

    def only(self, structures: tuple[str, ...]) -> WidthCut:
        """The part of this cut a method covering `structures` makes."""
        return WidthCut(self.heads if "heads" in structures else None,
                        self.ffn_keep if "ffn" in structures else None)


def whole_unit_heads_cut(shape: WidthShape, fraction: float, head_mode: HeadMode) -> WidthCut:
    """Heads go in whole units (KV groups, or query heads per group); a fraction that rounds to none
    or all of them is refused instead of being bumped to one unit (--fraction 0.1 of 2 groups used
    to remove half the heads)."""
    units, unit = (shape.n_kv, "KV groups") if head_mode == "groups" else (shape.group_size, "query heads per KV group")
    n = round(fraction * units)
    if not 0 < n < units:
        steps = ", ".join(f"{k / units:.3g}" for k in range(1, units)) or "none: nothing to remove"
        raise ConfigError(f"--fraction {fraction:g} of {units} {unit} removes {n} (round({fraction * units:.3g})); "
                          f"the heads method removes whole units", where="--fraction",
                          fix=f"choose one of {steps}" + (" or --head-mode per-group" if head_mode == "groups" else ""))
    return WidthCut(heads=(head_mode, n))


def aligned_ffn_cut(shape: WidthShape, fraction: float, head_mode: HeadMode) -> WidthCut:
    return WidthCut(ffn_keep=aligned_keep(shape.inter, fraction, ALIGN))


def coupled_cut(shape: WidthShape, fraction: float, head_mode: HeadMode) -> WidthCut:
    """About `fraction` of each layer's parameters: query heads per group, MLP channels the rest."""
    per_group, n_keep = coupled_counts(shape.hidden, shape.n_heads, shape.n_kv, shape.head_dim, shape.inter, fraction,
                                       ALIGN)
    return WidthCut(heads=("per-group", per_group) if per_group else None,
                    ffn_keep=n_keep if n_keep < shape.inter else None)


def keep_by_scores(scores: dict[str, torch.Tensor], shape: WidthShape, cut: WidthCut) -> dict:
    """{'heads': per-layer kept query heads or None, 'ffn': per-layer kept channels or None}: the
    highest-scoring units survive `cut`. A KV group scores its query heads plus its own 'kv' score
    (zero when the scorer gives none)."""
    heads = ffn = None
    if cut.heads is not None and cut.heads[0] == "groups":
        kv = scores.get("kv", torch.zeros(shape.n_layers, shape.n_kv, dtype=torch.float64))
        heads = keep_kv_groups(scores["heads"], kv, cut.heads[1])
    elif cut.heads is not None:
        heads = keep_heads_per_group(scores["heads"], shape.n_kv, cut.heads[1])
    if cut.ffn_keep is not None:
        ffn = keep_channels(scores["ffn"], cut.ffn_keep)
    return {"heads": heads, "ffn": ffn}


Scores = dict[str, torch.Tensor]  # "heads": (layers, heads), "kv": (layers, kv heads), "ffn": (layers, channels)


@dataclass(frozen=True)
class WidthMethod:
    """A width method carries its facts and its behaviour; callers (the prune command, the planner's
    width step) ask it and never test its name.

    * `structures`: what it shrinks ("heads", "ffn"); a method covering both shrinks them together;
    * `importance`: the signal the width stage collects for it, "activation" (forward hooks, no
      gradients) or "taylor" (one backward per window); `score(model, windows) -> Scores`, when given,
      is its own scorer instead, and `importance` then says which of the two kinds of pass it makes;
    * `cut(shape, fraction, head_mode) -> WidthCut`: what a `--fraction` removes, refused before scoring;
    * `decide(scores, shape, cut)`: which units survive the cut;
    * `default`: with no --width-method the planner runs the default method of each structure in turn.
    """

    name: str
    summary: str
    structures: tuple[str, ...]
    importance: Literal["activation", "taylor"]
    criterion: str  # how units are ranked, in words (plans and dry runs print it)
    cut: Callable[[WidthShape, float, HeadMode], WidthCut]
    decide: Callable[[Scores, WidthShape, WidthCut], dict] = keep_by_scores
    score: Callable[..., Scores] | None = None
    default: bool = False


def register_width(method: WidthMethod) -> WidthMethod:
    return register("width", method.name, family="width")(method)


def default_methods() -> list[WidthMethod]:
    """The methods the planner runs with no --width-method: the default of each structure, in
    STRUCTURES order (heads first, then FFN channels scored on the head-pruned model)."""
    specs = [registry.get("width", n) for n in registry.names("width")]
    return [next(m for m in specs if m.default and m.structures == (s,)) for s in STRUCTURES]


def width_methods(name: str | None, where: str = "--width-method") -> list[WidthMethod]:
    """The width methods a plan runs: the named one, or (None) the default of each structure."""
    return default_methods() if name is None else [registry.get("width", name, where=where)]


HEADS = register_width(WidthMethod(
    "heads", "GQA-aware head pruning by head output norm (or --importance taylor); same count per layer",
    ("heads",), "activation", "head output norm", whole_unit_heads_cut, default=True))
FFN = register_width(WidthMethod(
    "ffn", "MLP channel pruning (gate/up rows, down columns) by activation contribution (or taylor)",
    ("ffn",), "activation", "activation", aligned_ffn_cut, default=True))
TAYLOR = register_width(WidthMethod(
    "taylor", "LLM-Pruner-style coupled heads + MLP channels by second-order Taylor importance, "
              "sum over windows of (w * dL/dw)^2 on the calibration loss",
    ("heads", "ffn"), "taylor", "second-order Taylor", coupled_cut))
