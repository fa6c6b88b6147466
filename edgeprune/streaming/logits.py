"""Next-token logits of a checkpoint too big to load, one decoder layer at a time (stream_layers),
then the final norm and the output head read as single tensors. What export's verify gate
compares the F16 GGUF against when the model is streamed instead of loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgeprune.streaming.stream import ShardReader, forward_batches, stream_layers

HEAD_ROWS = 8192  # output-head rows made float32 at a time: a 128k x 4096 head is 2 GB as one copy


def streamed_logits(hf_dir: Path, tokens: list[int]) -> np.ndarray:
    """(len(tokens) x vocab) float32 logits, as the loaded model in float32 gives them."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    cfg = json.loads((hf_dir / "config.json").read_text())
    hs: list = []

    def visit(_idx, layer, batches, kw):
        forward_batches(layer, batches, kw)
        hs[:] = batches

    stream_layers(hf_dir, torch.tensor([tokens]), visit, batch_size=1)
    reader = ShardReader(hf_dir)
    norm = LlamaRMSNorm(cfg["hidden_size"], eps=cfg.get("rms_norm_eps", 1e-6))
    norm.weight.data = reader.get("model.norm.weight")
    head = "lm_head.weight" if "lm_head.weight" in reader.where else "model.embed_tokens.weight"
    weight = reader.stored(head)
    with torch.no_grad():
        h = norm(hs[0][0])
        parts = [h @ weight[i:i + HEAD_ROWS].float().T for i in range(0, weight.shape[0], HEAD_ROWS)]
    return torch.cat(parts, dim=-1).numpy()


def named_weights(hf_dir: Path):
    """(name, tensor in its stored dtype) for every weight, read one at a time."""
    reader = ShardReader(hf_dir)
    for name in sorted(reader.where):
        yield name, reader.stored(name)
