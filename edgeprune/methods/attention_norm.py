"""Attention-norm analysis: how much each layer's attention sublayer changes the residual stream.

Per layer l with input h and attention output a (before the residual add):
  attention BI  = mean_t 1 - cos(h, h + a)   (ShortGPT's BI applied to the attention sublayer)
  relative norm = mean_t ||a|| / ||h||
Layers whose attention barely moves the stream are the candidates.

Only *whole-layer* removal is offered. Removing the attention sublayer alone (keeping the MLP)
needs a layer without attention, which no standard format here can hold: transformers' Llama has
no attention-free layer (the only llama.cpp architecture with attention-free blocks, `deci`, is
DeciLM / Nemotron-51B, whose HF side needs trust_remote_code), so such a model would neither
reload with a plain `from_pretrained` nor convert through the llama converter. Zeroing `o_proj`
would load but saves no compute or bytes, so it is not offered as a pruning result.
"""

from __future__ import annotations

import torch

from edgeprune.methods.depth import DepthMethod, cosine, lowest_k
from edgeprune.registry import register


def attention_scores(h_in: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """[attention BI, relative norm] of one layer, each a mean over tokens (float64)."""
    bi = (1.0 - cosine(h_in, h_in + attn_out)).mean()
    rel = (attn_out.double().norm(dim=-1) / h_in.double().norm(dim=-1).clamp_min(1e-12)).mean()
    return torch.stack([bi, rel])


def _stats(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.stack([attention_scores(h, a) for h, a in pairs])  # (layers, 2)


ATTENTION_NORM = register("depth", "attention-norm", family="depth")(
    DepthMethod(
        name="attention-norm",
        summary="BI of each layer's attention sublayer (and ||attn||/||h||); remove the k whole layers lowest",
        stats=_stats,
        select=lambda s, k: lowest_k(s[:, 0], k),
        layer_scores=lambda s: [float(x) for x in s[:, 0]],
        inputs="attention",
    )
)
