"""Streamed depth scoring: weights are read one decoder layer at a time from the safetensors
files, so peak memory is the calibration activations + one layer + the embedding rows, not the
model. The calibration batch moves through layer l entirely before layer l+1 is loaded.

Supported method inputs: "hiddens" methods must be layer-local (stats of [h_l, h_l+1] is layer
l's score; true of block-influence), "last-token" keeps only each window's last row of every
h_l (tiny), "attention" is computed per layer. "model" methods (ppl-greedy) need the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path

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

    def get(self, name: str) -> torch.Tensor:
        with self._open(self.dir / self.where[name], "pt") as fh:
            return fh.get_tensor(name).float()

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


def streamed_depth_stats(hf_dir: Path, windows: torch.Tensor, method_name: str, batch_size: int = 4) -> torch.Tensor:
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    method = registry.get("depth", method_name)
    if method.inputs == "model":
        raise ConfigError(f"{method_name} needs the whole model; it cannot be streamed", where="--method",
                          fix="use block-influence, angular or attention-norm")
    cfg = AutoConfig.from_pretrained(hf_dir)
    cfg._attn_implementation = "sdpa"  # causal without a materialised mask
    reader = ShardReader(hf_dir)
    embed = reader.get("model.embed_tokens.weight")
    hs = [embed[windows[i:i + batch_size]] for i in range(0, len(windows), batch_size)]
    del embed
    pos = torch.arange(windows.shape[1])[None]
    kw = {"attention_mask": None, "position_ids": pos,
          "position_embeddings": LlamaRotaryEmbedding(cfg)(hs[0], position_ids=pos)}
    last = [[h[:, -1]] for h in hs]
    per_layer = []
    for idx in range(cfg.num_hidden_layers):
        layer = _layer(cfg, idx, reader.layer_state(idx))
        per_layer.append(_layer_stats(method, layer, hs, kw, last))
        del layer
    if method.inputs == "last-token":
        hiddens = [torch.cat([b[i] for b in last]) for i in range(cfg.num_hidden_layers + 1)]
        return method.stats(hiddens)
    return torch.cat(per_layer) / windows.numel()  # each layer's stats have a leading dim of 1
