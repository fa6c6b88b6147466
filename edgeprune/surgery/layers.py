"""Remove whole decoder layers from a Llama-family model, keeping it a standard checkpoint."""

from __future__ import annotations

import torch

from edgeprune.errors import ConfigError


def check_removal(num_layers: int, remove: list[int]) -> None:
    bad = [i for i in remove if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"layer indices {bad} out of range 0..{num_layers - 1}", where="layers to remove",
                          fix=f"the model has {num_layers} layers")
    if len(set(remove)) >= num_layers:
        raise ConfigError(f"cannot remove all {num_layers} layers", where="layers to remove",
                          fix="keep at least one decoder layer")


def remove_layers(model, remove: list[int]):
    """In place; renumbers `layer_idx` so the KV cache indexes the kept layers 0..n-1."""
    layers = model.model.layers
    check_removal(len(layers), remove)
    drop = set(remove)
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    for new_idx, layer in enumerate(kept):
        if hasattr(layer, "self_attn"):
            layer.self_attn.layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    model.model.layers = torch.nn.ModuleList(kept)
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop]
    cfg.num_hidden_layers = len(kept)
    return model
