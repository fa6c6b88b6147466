"""Run a decoder one layer at a time: capture the inputs of layer 0 once, then push hidden
states through any subset of layers. Used where the whole forward pass is the wrong unit:
greedy layer search (reuse the prefix), sequential sparsification (prune layer l, then feed its
new output to layer l+1) and streamed scoring.
"""

from __future__ import annotations

import torch


class _Stop(Exception):
    pass


def layer0_inputs(model, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(hidden states entering layer 0, the keyword arguments the model passes every layer)."""
    captured: dict = {}

    def grab(_mod, args, kwargs):
        captured["h"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    handle = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"], captured["kw"]


def run_layer(layer, h: torch.Tensor, kw: dict) -> torch.Tensor:
    out = layer(h, **kw)
    return out[0] if isinstance(out, tuple) else out


def lm_nll(model, h: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Mean next-token NLL from the last hidden states (final norm + LM head)."""
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(h)).float()
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten()))


class GreedyOracle:
    """loss_without(removed, j): the prefix of kept layers before j is shared by every candidate
    of a step, so its hidden states are cached per base set (about half the layer calls)."""

    def __init__(self, model, input_ids: torch.Tensor):
        self.model, self.ids = model, input_ids
        self.layers = list(model.model.layers)
        self.h0, self.kw = layer0_inputs(model, input_ids)
        self._base: frozenset | None = None
        self._inputs: dict[int, torch.Tensor] = {}

    def _rebase(self, removed: frozenset) -> None:
        self._base, self._inputs = removed, {}
        h = self.h0
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                if i in removed:
                    continue
                self._inputs[i] = h
                h = run_layer(layer, h, self.kw)

    def __call__(self, removed: frozenset, j: int) -> float:
        if removed != self._base:
            self._rebase(removed)
        h = self._inputs[j]
        with torch.no_grad():
            for i in range(j + 1, len(self.layers)):
                if i not in removed:
                    h = run_layer(self.layers[i], h, self.kw)
            return lm_nll(self.model, h, self.ids)
