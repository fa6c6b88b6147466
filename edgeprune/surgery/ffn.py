"""Remove MLP channels (gate/up rows, down columns) from a Llama-family model."""

from __future__ import annotations

import torch

from edgeprune.errors import ConfigError
from edgeprune.surgery.heads import slice_linear


def keep_ffn_channels(model, keep: list[list[int]]):
    """In place; keep[l] = intermediate channels kept in layer l, the same count in every layer."""
    counts = {len(k) for k in keep}
    if len(keep) != len(model.model.layers) or len(counts) != 1:
        raise ConfigError(f"channel lists must be one per layer with one common length, got {sorted(counts)}",
                          where="ffn surgery", fix="keep the same number of channels in every layer")
    inter = model.config.intermediate_size
    for layer, chans in zip(model.model.layers, keep):
        if not chans or min(chans) < 0 or max(chans) >= inter:
            raise ConfigError(f"channel indices out of range 0..{inter - 1}", where="ffn surgery",
                              fix="keep at least one valid channel")
        idx = torch.tensor(sorted(chans))
        mlp = layer.mlp
        slice_linear(mlp.gate_proj, rows=idx)
        slice_linear(mlp.up_proj, rows=idx)
        slice_linear(mlp.down_proj, cols=idx)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(idx)
    model.config.intermediate_size = counts.pop()
    return model
