"""Random-weight checkpoints of the Llama shapes users bring, for measuring sizes, memory and speed.

The weights are noise, so every quality number of such a model means nothing; its bytes, its peak
memory in each stage and its decode speed are those of the real model of that shape. What differs
from the Hub's checkpoint: the tokenizer is the default model's (SmolLM2, 49,152 tokens), so the
vocabulary rows shrink from 128,256 to 49,152 (embedding and head: 262 M fewer parameters at 1B
with tied embeddings, 646 M fewer at 8B, untied).

Written the way the Hub ships them: bf16 safetensors in shards of at most SHARD_BYTES named
model-0000i-of-0000N.safetensors with model.safetensors.index.json (one model.safetensors when it
fits one shard). Each tensor is drawn from its own generator seeded by (seed, tensor name), one at
a time, and streamed to disk, so memory stays at one tensor and a tensor does not change when
another shape or order is chosen.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import ConfigError
from edgeprune.toolchain.checkpoint import OutTensor, write_safetensors

SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default shard size, what the Hub holds
INIT_STD = 0.02          # Llama's initializer_range: activations stay finite through 32 layers


@dataclass(frozen=True)
class Shape:
    """The architecture fields of a Hub config.json (meta-llama/<name>), vocabulary aside."""
    hub_name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool
    rope_factor: float

    def config(self, vocab: int, bos: int | None, eos: int | None) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
            "hidden_size": self.hidden, "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.hidden // self.heads,
            "intermediate_size": self.intermediate, "hidden_act": "silu", "rms_norm_eps": 1e-5,
            "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": self.rope_factor, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "tie_word_embeddings": self.tied, "vocab_size": vocab, "bos_token_id": bos, "eos_token_id": eos,
            "attention_bias": False, "mlp_bias": False, "initializer_range": INIT_STD, "use_cache": True,
            "edgeprune_synthetic": {"shape": self.hub_name, "note": "random weights: quality numbers mean nothing"},
        }


SHAPES = {
    "llama-3.2-1b": Shape("Llama-3.2-1B", 2048, 16, 32, 8, 8192, True, 32.0),
    "llama-3.2-3b": Shape("Llama-3.2-3B", 3072, 28, 24, 8, 8192, True, 32.0),
    "llama-3.1-8b": Shape("Llama-3.1-8B", 4096, 32, 32, 8, 14336, False, 8.0),
}


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise ConfigError(f"unknown shape '{name}'", where="--shape", fix=f"choose one of: {', '.join(SHAPES)}")
    return SHAPES[name]


def tensor_shapes(s: Shape, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every weight, in the order transformers names them."""
    hd, kv = s.hidden // s.heads, s.kv_heads * (s.hidden // s.heads)
    out = [("model.embed_tokens.weight", (vocab, s.hidden))]
    for i in range(s.layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (s.hidden,)),
                (p + "self_attn.q_proj.weight", (s.heads * hd, s.hidden)),
                (p + "self_attn.k_proj.weight", (kv, s.hidden)),
                (p + "self_attn.v_proj.weight", (kv, s.hidden)),
                (p + "self_attn.o_proj.weight", (s.hidden, s.heads * hd)),
                (p + "post_attention_layernorm.weight", (s.hidden,)),
                (p + "mlp.gate_proj.weight", (s.intermediate, s.hidden)),
                (p + "mlp.up_proj.weight", (s.intermediate, s.hidden)),
                (p + "mlp.down_proj.weight", (s.hidden, s.intermediate))]
    out.append(("model.norm.weight", (s.hidden,)))
    if not s.tied:
        out.append(("lm_head.weight", (vocab, s.hidden)))
    return out


def draw(name: str, shape: tuple[int, ...], seed: int):
    """Norm weights are ones (what a trained RMSNorm starts from); matrices N(0, INIT_STD), bf16."""
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return (torch.randn(shape, generator=gen) * INIT_STD).to(torch.bfloat16)


def shard_plan(tensors: list[tuple[str, tuple[int, ...]]], max_bytes: int = SHARD_BYTES) -> list[list]:
    """Consecutive tensors grouped into shards of at most max_bytes (a bigger tensor gets its own)."""
    shards, cur, size = [], [], 0
    for name, shape in tensors:
        n = 2 * math.prod(shape)
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    return shards + [cur] if cur else shards



def _drawn(name: str, shape: tuple[int, ...], seed: int) -> OutTensor:
    """The OutTensor of one weight: drawn when the writer reaches it, written, freed."""
    def emit(fh) -> int:
        import torch

        t = draw(name, shape, seed).contiguous()
        return fh.write(memoryview(t.view(torch.uint8).numpy()))  # bf16 has no numpy dtype; its bytes do

    return OutTensor(name, "BF16", list(shape), 2 * math.prod(shape), emit)


def write_checkpoint(shape: Shape, vocab: int, out: Path, seed: int, max_shard: int = SHARD_BYTES) -> dict:
    """Shards (and their index) into `out`; returns sizes. The caller writes config and tokenizer."""
    tensors = tensor_shapes(shape, vocab)
    shards = shard_plan(tensors, max_shard)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    total = 0
    for fname, entries in zip(names, shards):
        write_safetensors(out / fname, [_drawn(name, shp, seed) for name, shp in entries])
        total += sum(2 * math.prod(s) for _, s in entries)
    if n > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {name: f for f, entries in zip(names, shards) for name, _ in entries}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return {"shards": names, "weight_bytes": total, "params": total // 2}
