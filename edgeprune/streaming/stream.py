"""Streamed scoring: weights are read one decoder layer at a time from the safetensors files, so
peak memory is the calibration activations + one layer + the embedding rows, not the model. The
calibration batch moves through layer l entirely before layer l+1 is loaded (stream_layers);
depth scoring (streamed_depth_stats) and width importance (stages/width.py) hook that loop.

Supported method inputs: "hiddens" methods must be layer-local (stats of [h_l, h_l+1] is layer
l's score; true of block-influence), "last-token" keeps only each window's last row of every
h_l (tiny), "attention" is computed per layer. "model" methods (ppl-greedy) need the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from edgeprune import registry
from edgeprune.errors import ConfigError, ModelError


class ShardReader:
    """tensor name -> tensor, opening the shard that holds it (memory-mapped, read on demand)."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            where = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(hf_dir.glob("*.safetensors"))
            if not files:
                raise ModelError("no *.safetensors weights", where=str(hf_dir), fix="stream from a HF folder")
            where = {}
            for f in files:
                with safe_open(f, "pt") as fh:
                    where.update({k: f.name for k in fh.keys()})
        self.dir, self.where, self._open = hf_dir, where, safe_open

    def stored(self, name: str) -> torch.Tensor:
        """In the checkpoint's own dtype (bf16 stays bf16: half the bytes of get)."""
        with self._open(self.dir / self.where[name], "pt") as fh:
            return fh.get_tensor(name)

    def get(self, name: str) -> torch.Tensor:
        return self.stored(name).float()

    def layer_state(self, idx: int) -> dict[str, torch.Tensor]:
        prefix = f"model.layers.{idx}."
        return {k[len(prefix):]: self.get(k) for k in self.where if k.startswith(prefix)}


def _layer(cfg, idx: int, state: dict):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    with torch.device("meta"):
        layer = LlamaDecoderLayer(cfg, idx)
    layer.load_state_dict(state, assign=True, strict=True)
    return layer.eval()


def _layer_stats(method, layer, hs: list[torch.Tensor], kw: dict, keep_last: list) -> torch.Tensor | None:
    """Run every batch through one layer (in place in `hs`); returns that layer's stats summed
    over batches (weighted by tokens) for layer-local methods."""
    total = None
    for b, h in enumerate(hs):
        attn: list = []
        handle = layer.self_attn.register_forward_hook(lambda _m, _a, out: attn.append(out[0]))
        with torch.no_grad():
            out = layer(h, **kw)
        handle.remove()
        out = out[0] if isinstance(out, tuple) else out
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
        if method.inputs == "hiddens":
            s = method.stats([flat(h), flat(out)])
        elif method.inputs == "attention":
            s = method.stats([(flat(h), flat(attn[0]))])
        else:
            keep_last[b].append(out[:, -1])
            s = None
        if s is not None:
            s = s * h.shape[0] * h.shape[1]
            total = s if total is None else total + s
        hs[b] = out
    return total


Visit = Callable[[int, torch.nn.Module, list, dict], Any]


def forward_batches(layer, hs: list[torch.Tensor], kw: dict) -> None:
    """Run every batch through one layer, replacing hs[b] with its output."""
    for b, h in enumerate(hs):
        with torch.no_grad():
            out = layer(h, **kw)
        hs[b] = out[0] if isinstance(out, tuple) else out


def hooked(hook: Callable[[int, torch.nn.Module], list]) -> Visit:
    """A visit for stream_layers: hook(idx, layer) registers hooks on the layer and returns their
    handles; every batch then runs through it, and the hooks are removed whatever happens."""
    def visit(idx: int, layer, hs: list, kw: dict) -> None:
        handles = hook(idx, layer)
        try:
            forward_batches(layer, hs, kw)
        finally:
            for h in handles:
                h.remove()
    return visit


def stream_layers(hf_dir: Path, windows: torch.Tensor, visit: Visit, batch_size: int = 4) -> list:
    """Load decoder layer 0, 1, ... one at a time and call visit(idx, layer, hs, kw) -> result on
    each; `hs` holds the batches' hidden states entering the layer (float32) and `kw` the keyword
    arguments a layer takes. visit must move every batch through the layer (hs[b] = its output;
    forward_batches does that), hooking the layer as it needs. Returns the results in layer order."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = AutoConfig.from_pretrained(hf_dir)
    cfg._attn_implementation = "sdpa"  # causal without a materialised mask
    reader = ShardReader(hf_dir)
    embed = reader.stored("model.embed_tokens.weight")  # rows picked before float(): not a float copy of the table
    hs = [embed[windows[i:i + batch_size]].float() for i in range(0, len(windows), batch_size)]
    del embed
    pos = torch.arange(windows.shape[1])[None]
    kw = {"attention_mask": None, "position_ids": pos,
          "position_embeddings": LlamaRotaryEmbedding(cfg)(hs[0], position_ids=pos)}
    results = []
    for idx in range(cfg.num_hidden_layers):
        layer = _layer(cfg, idx, reader.layer_state(idx))
        results.append(visit(idx, layer, hs, kw))
        del layer
    return results


def streamed_depth_stats(hf_dir: Path, windows: torch.Tensor, method_name: str, batch_size: int = 4) -> torch.Tensor:
    method = registry.get("depth", method_name)
    if method.inputs == "model":
        raise ConfigError(f"{method_name} needs the whole model; it cannot be streamed", where="--method",
                          fix="use block-influence, angular or attention-norm")
    last: list = []

    def visit(idx: int, layer, hs: list, kw: dict):
        if idx == 0:  # the embeddings' last rows are hiddens[0]
            last.extend([h[:, -1]] for h in hs)
        return _layer_stats(method, layer, hs, kw, last)

    per_layer = stream_layers(hf_dir, windows, visit, batch_size)
    if method.inputs == "last-token":
        hiddens = [torch.cat([b[i] for b in last]) for i in range(len(per_layer) + 1)]
        return method.stats(hiddens)
    return torch.cat(per_layer) / windows.numel()  # each layer's stats have a leading dim of 1
