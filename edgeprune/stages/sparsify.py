"""Sparsification plumbing: sequential, one decoder layer at a time.

The calibration hidden states enter layer 0; for each layer, hooks on its linear modules collect
the input statistic the method needs, every linear of the layer is pruned, and the layer is run
again so layer l+1 calibrates on what the *pruned* layer l outputs (as in SparseGPT and Wanda).
Only one layer's statistics are alive at a time.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from edgeprune import registry
from edgeprune.methods.sparsity import NM, SparsityMethod, check_sparsity
from edgeprune.streaming.layerwise import layer0_inputs, run_layer


def _linears(layer) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}


class _InputStats:
    """Accumulates sum x_j^2 (Wanda) or X^T X (SparseGPT) of one linear's inputs."""

    def __init__(self, kind: str, in_features: int):
        self.kind = kind
        size = (in_features, in_features) if kind == "hessian" else (in_features,)
        self.value = torch.zeros(size, dtype=torch.float32)

    def __call__(self, _mod, args, _out):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        self.value += x.T @ x if self.kind == "hessian" else (x * x).sum(0)


def _prune_layer(layer, method: SparsityMethod, hs: list[torch.Tensor], kw: dict, sparsity: float,
                 nm: NM | None) -> None:
    linears = _linears(layer)
    stats: dict[str, _InputStats] = {}
    if method.calibration != "none":
        stats = {n: _InputStats(method.calibration, m.in_features) for n, m in linears.items()}
        handles = [m.register_forward_hook(stats[n]) for n, m in linears.items()]
        try:
            with torch.no_grad():
                for h in hs:
                    run_layer(layer, h, kw)
        finally:
            for hd in handles:
                hd.remove()
    for n, mod in linears.items():
        s = stats[n].value if n in stats else None
        mod.weight.data = method.prune(mod.weight.data.float(), s, sparsity, nm).to(mod.weight.dtype)


def sparsify(model, windows: torch.Tensor, method_name: str, sparsity: float = 0.5, nm: NM | None = None,
             batch_size: int = 4) -> dict:
    """Prune every linear of every decoder layer in place; returns the achieved sparsity."""
    method: SparsityMethod = registry.get("sparsity", method_name)
    if nm is None:
        check_sparsity(sparsity)
    hs, kw = [], {}
    if method.calibration != "none":
        for start in range(0, len(windows), batch_size):
            h, kw = layer0_inputs(model, windows[start:start + batch_size])
            hs.append(h)
    for layer in tqdm(model.model.layers, desc=f"sparsify {method_name}", unit="layer"):
        _prune_layer(layer, method, hs, kw, sparsity, nm)
        if method.calibration != "none":
            with torch.no_grad():
                hs = [run_layer(layer, h, kw) for h in hs]
    return sparsity_report(model)


def sparsity_report(model) -> dict:
    zeros = total = 0
    for layer in model.model.layers:
        for mod in _linears(layer).values():
            zeros += int((mod.weight == 0).sum())
            total += mod.weight.numel()
    return {"zero_weights": zeros, "layer_weights": total, "sparsity": zeros / max(1, total)}
