"""Exact-ish GGUF size of a Llama-family model from its shapes alone (no weights).

Replicates llama.cpp's own choices through the quant type's spec (edgeprune/quants.py, rules of
llama-cpp-python 0.3.36's llama.cpp): the per-tensor type a file type picks (Q6_K for the output
head, more bits for some attn_v / ffn_down layers by `use_more_bits`), then the shape fallback: a
256-block k-quant on a row length not divisible by 256 becomes Q5_0 (Q4_K), Q5_1 (Q5_K), Q8_0
(Q6_K) or Q4_0 (Q3_K). SmolLM2's hidden size 576 is not a multiple of 256, so most of its "Q4_K_M"
tensors are really Q5_0 — which is why a size model of "4.85 bits per weight" is 10 % off for it.
Then the GGUF layout: header, key/values, tensor infos, 32-byte aligned data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from edgeprune import quants
from edgeprune.quants import tensor_bytes, use_more_bits  # noqa: F401  (re-exported)

ALIGN = 32
# Key/value bytes per vocabulary entry (token string, type, BPE merges): SmolLM2's GGUF holds
# 1,769,411 bytes of key/values for 49,152 tokens + 48,900 merges = 36.0 per token.
KV_BYTES_PER_TOKEN = 36.0
KV_BYTES_FIXED = 4096


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs of a Llama-family config.json."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool = False
    rope_freqs: bool = False  # Llama-3.1 "llama3" rope scaling stores a small rope_freqs tensor
    name: str = ""

    @classmethod
    def from_config(cls, cfg: dict, name: str = "") -> "ModelShape":
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        rope = (cfg.get("rope_scaling") or {}).get("rope_type", (cfg.get("rope_scaling") or {}).get("type"))
        return cls(hidden=hidden, layers=int(cfg["num_hidden_layers"]), heads=heads,
                   kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or hidden // heads), ffn=int(cfg["intermediate_size"]),
                   vocab=int(cfg["vocab_size"]), tied=bool(cfg.get("tie_word_embeddings", False)),
                   rope_freqs=rope == "llama3", name=name or cfg.get("_name_or_path", ""))

    def pruned(self, layers: int | None = None, heads: int | None = None, ffn: int | None = None,
               kv_heads: int | None = None) -> "ModelShape":
        """Same model with fewer layers / query heads / KV heads / FFN channels."""
        return replace(self, layers=layers or self.layers, heads=heads or self.heads, ffn=ffn or self.ffn,
                       kv_heads=kv_heads or self.kv_heads)

    @property
    def params(self) -> int:
        return sum(n for _, _, n in tensor_list(self))


def tensor_list(s: ModelShape) -> list[tuple[str, int, int]]:
    """(gguf name, ne[0] i.e. row length, elements) in the converter's order."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    out = [("token_embd.weight", s.hidden, s.hidden * s.vocab)]
    if s.rope_freqs:
        out.append(("rope_freqs.weight", s.head_dim // 2, s.head_dim // 2))
    for i in range(s.layers):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", s.hidden, s.hidden), (b + "attn_q.weight", s.hidden, s.hidden * q),
                (b + "attn_k.weight", s.hidden, s.hidden * kv), (b + "attn_v.weight", s.hidden, s.hidden * kv),
                (b + "attn_output.weight", q, q * s.hidden), (b + "ffn_norm.weight", s.hidden, s.hidden),
                (b + "ffn_gate.weight", s.hidden, s.hidden * s.ffn), (b + "ffn_up.weight", s.hidden, s.hidden * s.ffn),
                (b + "ffn_down.weight", s.ffn, s.ffn * s.hidden)]
    out.append(("output_norm.weight", s.hidden, s.hidden))
    if not s.tied:
        out.append(("output.weight", s.hidden, s.hidden * s.vocab))
    return out


def slot(s: ModelShape, name: str, ncols: int, imatrix: bool = False) -> quants.Slot:
    """What llama.cpp's type choice knows of one weight of this model."""
    role = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
    layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
    return quants.Slot(role, layer, ncols, s.layers, s.heads // s.kv_heads, s.tied,
                       llama_70b=s.layers == 80 and s.heads != s.kv_heads, imatrix=imatrix)


def ffn_multiple(s: ModelShape, quant: str) -> int:
    """The FFN width step that keeps ffn_down (whose rows are the FFN width) in the file type's own
    block type: the default type's block (256 for the K-quants) on a model whose hidden and FFN sizes
    are multiples of it, else 32. Off that grid, every K-quant ffn_down falls back to a legacy
    32-block type (Q4_K → Q5_0, Q6_K → Q8_0), whose kernel on this CPU reads its bytes at 0.43 × the
    speed of Q4_K's (bench/README, Real sizes). A model whose hidden size is off the grid (SmolLM2's
    576) is mostly legacy blocks already, so it keeps the fine step."""
    spec = quants.get(quant)
    block = quants.block_size(spec.default) if spec.quantized else 32
    return block if s.hidden % block == 0 and s.ffn % block == 0 else 32


def tensor_types(s: ModelShape, ftype: str, imatrix: bool = False) -> list[tuple[str, str, int]]:
    """(name, ggml type, bytes) per tensor, as llama_model_quantize would write them (with an
    importance matrix when `imatrix`: a few of llama.cpp's rules differ then)."""
    spec = quants.get(ftype)
    out = []
    for name, ncols, n in tensor_list(s):
        # 1-D tensors and norms are not quantized: the converter writes them F32
        t = "F32" if n == ncols or name.endswith("_norm.weight") else spec.tensor_type(slot(s, name, ncols, imatrix))
        out.append((name, t, tensor_bytes(t, n)))
    return out


def gguf_bytes(s: ModelShape, ftype: str, kv_bytes: int | None = None, imatrix: bool = False) -> int:
    """File size: header + key/values + tensor infos, padded, + each tensor's data padded to 32."""
    rows = tensor_types(s, ftype, imatrix)
    kv = kv_bytes if kv_bytes is not None else int(KV_BYTES_FIXED + KV_BYTES_PER_TOKEN * s.vocab)
    dims = [1 if n == ncols else 2 for _, ncols, n in tensor_list(s)]
    infos = sum(8 + len(name) + 4 + 8 * d + 4 + 8 for (name, _, _), d in zip(rows, dims))
    head = 24 + kv + infos
    data = sum(-(-b // ALIGN) * ALIGN for _, _, b in rows)
    return -(-head // ALIGN) * ALIGN + data


def bits_per_weight(s: ModelShape, ftype: str, imatrix: bool = False) -> float:
    rows = tensor_types(s, ftype, imatrix)
    return 8 * sum(b for _, _, b in rows) / s.params
