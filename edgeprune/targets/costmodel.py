"""Roofline cost model of a GGUF on a CPU device: file size, peak RAM, prefill and decode speed.

Decode is memory-bound: every generated token reads every weight once (the token embedding
only by one row) plus the KV cache, so seconds/token = bytes / bandwidth, plus a per-layer
dispatch overhead that dominates tiny models. Prefill is compute-bound: 2 FLOPs per weight per
token plus attention over the prompt. Both are written as theta . x with two features each:

    decode  s/token = t1 * bytes_read / bandwidth          + t2 * (layers * LAYER_S + TOKEN_S)
    prefill s/token = p1 * flops_per_token / compute       + p2 * (layers * LAYER_S_PP + TOKEN_S_PP)

theta = 1 is the uncalibrated prior (efficiency 1/t1 of the datasheet bandwidth); measured runs
fit theta per target (calibration.py), the bandwidth / compute term per quant type (t1, p1), the
dispatch term shared. Peak RAM = file (mmapped, resident) + KV cache at the context + compute
buffers + the copies ggml-cpu repacks on the device's CPU (repack.py) + a runtime overhead (the
python + libllama process), the last one calibrated as the median residual of measured peak RSS.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeprune.targets.gguf_size import ModelShape, gguf_bytes, tensor_list, tensor_types
from edgeprune.targets.repack import device_features, repacks

# Priors (seconds) for per-op dispatch: llama.cpp runs ~15 graph nodes per layer per token.
LAYER_S = 30e-6
TOKEN_S = 300e-6         # sampling, logits copy and python call overhead per decoded token
LAYER_S_PP = 2e-6        # per layer per prompt token when batched
TOKEN_S_PP = 50e-6
BW_EFFICIENCY_PRIOR = 0.7  # llama.cpp decode typically reaches 60-80 % of a CPU's stream bandwidth
GFLOPS_PER_THREAD = 25.0   # quantized matmul throughput per core (AVX2 / NEON dot) when no datasheet
RUNTIME_OVERHEAD_PRIOR = 60e6  # python interpreter + libllama + numpy, bytes


@dataclass(frozen=True)
class DeviceSpec:
    bandwidth_gbs: float
    compute_gflops: float
    threads: int
    # the CPU features llama.cpp's repack rules test (repack.py); empty: nothing is repacked
    cpu_features: frozenset = frozenset()

    @classmethod
    def from_target(cls, target, host_threads: int | None = None) -> "DeviceSpec":
        import os

        d = target.device
        threads = d.threads or host_threads or os.cpu_count() or 1
        return cls(d.mem_bandwidth_gbs, d.compute_gflops or GFLOPS_PER_THREAD * threads, threads,
                   device_features(d))


@dataclass(frozen=True)
class Factors:
    """Calibrated multipliers (1.0 = prior) and the RAM overhead; see calibration.py."""

    decode: tuple[float, float] = (1.0 / BW_EFFICIENCY_PRIOR, 1.0)
    prefill: tuple[float, float] = (1.0, 1.0)
    ram_overhead: float = RUNTIME_OVERHEAD_PRIOR
    samples: int = 0
    # Per quant type (file type) multiplier of the bandwidth (decode) and compute (prefill) term,
    # for the types measured on this target: kernels differ per type (ggml-cpu's repacked Q4_0
    # decodes ~15 % faster per byte than SmolLM2's Q5_0-heavy Q4_K_M here), which one device-wide
    # efficiency cannot express. Unmeasured types use decode[0] / prefill[0], the prior.
    decode_quant: dict = field(default_factory=dict)
    prefill_quant: dict = field(default_factory=dict)
    # Per ggml tensor type (Q4_K, Q5_0, Q6_K, ..., and "KV" for the cache) multiplier of the bytes of
    # that type: a file type's efficiency assumes its usual tensor mix, but pruning changes the mix
    # (an FFN width that is no multiple of 256 turns every K-quant ffn_down into Q5_0), so a pruned
    # file of one type reads bytes of other kernels. Types missing here fall back to decode_theta.
    decode_type: dict = field(default_factory=dict)

    # A mix ("Q4_K_M+head-low") takes its type's efficiency until it has one of its own: its bytes
    # already differ in the features; what is per type is how fast each byte is read.
    def decode_theta(self, quant: str) -> tuple[float, float]:
        return (self.decode_quant.get(quant, self.decode_quant.get(quant.split("+")[0], self.decode[0])),
                self.decode[1])

    def prefill_theta(self, quant: str) -> tuple[float, float]:
        return (self.prefill_quant.get(quant, self.prefill_quant.get(quant.split("+")[0], self.prefill[0])),
                self.prefill[1])


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: what to keep and how to quantize."""

    layers_removed: int = 0
    heads: int | None = None   # query heads kept per layer (None: all)
    ffn: int | None = None     # FFN channels kept per layer (None: all)
    quant: str = "Q4_K_M"
    kv_heads: int | None = None  # KV heads kept (None: all); whole GQA groups go with their query heads

    @property
    def pruned(self) -> bool:
        """Anything cut (layers, heads, FFN channels); a KV cut goes with its query heads."""
        return bool(self.layers_removed or self.heads or self.ffn)

    def shape(self, base: ModelShape) -> ModelShape:
        return base.pruned(layers=base.layers - self.layers_removed, heads=self.heads, ffn=self.ffn,
                           kv_heads=self.kv_heads)

    def label(self, base: ModelShape) -> str:
        parts = [f"-{self.layers_removed}L" if self.layers_removed else "full depth"]
        if self.heads and self.heads != base.heads:
            parts.append(f"heads {self.heads}/{base.heads}" + (f" kv {self.kv_heads}" if self.kv_heads else ""))
        if self.ffn and self.ffn != base.ffn:
            parts.append(f"ffn {self.ffn}/{base.ffn}")
        return " ".join(parts) + f" {self.quant}"


@dataclass
class Prediction:
    file_bytes: int
    weights_read: int
    ram_bytes: float
    ram_static: float  # ram_bytes without the calibrated runtime overhead
    kv_bytes: float
    tg_tps: float
    pp_tps: float
    features: dict = field(default_factory=dict)

    def latency_s(self, prompt: int, answer: int) -> float:
        return prompt / self.pp_tps + answer / self.tg_tps

    def to_dict(self) -> dict:
        return asdict(self)


def kv_cache_bytes(s: ModelShape, context: int, bytes_per_elt: int = 2) -> int:
    """K and V, F16 (llama.cpp default), per layer per KV head per position."""
    return 2 * s.layers * s.kv_heads * s.head_dim * context * bytes_per_elt


def compute_buffer_bytes(s: ModelShape, ubatch: int, context: int) -> int:
    """llama.cpp's CPU compute buffer: activations of one micro-batch + KQ scores + logits."""
    act = ubatch * (4 * s.hidden + 3 * s.ffn) * 4
    kq = ubatch * context * s.heads * 4
    return act + kq + s.vocab * 4 * 2


def repacked_bytes(s: ModelShape, quant: str, features: frozenset = frozenset()) -> int:
    """Bytes of the interleaved copies ggml-cpu makes at load on a CPU with `features` (repack.py):
    matmul weights only, so never the token embedding, which is gathered from."""
    rows = {name: n // ncols for name, ncols, n in tensor_list(s)}
    return sum(b for name, t, b in tensor_types(s, quant)
               if name != "token_embd.weight" and rows[name] > 1 and repacks(t, rows[name], features))


def weights_read_by_type(s: ModelShape, rows: list) -> dict[str, int]:
    """Weight bytes read to decode one token, by ggml type, from a file's (name, type, bytes) rows:
    all weights, but only one row of an untied token embedding."""
    out: dict[str, int] = {}
    for name, t, b in rows:
        if not (name == "token_embd.weight" and not s.tied):
            out[t] = out.get(t, 0) + b
    return out


def weights_read_per_token(s: ModelShape, quant: str) -> int:
    """Bytes read to decode one token (weights_read_by_type, summed)."""
    return sum(weights_read_by_type(s, tensor_types(s, quant)).values())


def flops_per_token(s: ModelShape, context: int) -> float:
    """Matmul FLOPs per prompt token: 2 per weight (output head once) + attention scores and mix."""
    per_layer = 2 * s.hidden * (2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim) + 6 * s.hidden * s.ffn
    attn = 4 * s.heads * s.head_dim * (context / 2)
    return s.layers * (per_layer + attn) + 2 * s.hidden * s.vocab


def read_by_type(s: ModelShape, quant: str | list, prompt: int, answer: int) -> dict[str, int]:
    """Bytes read per decoded token, split by ggml type (weights) and "KV" (the cache at mid-answer).
    `quant`: a file type, or the (name, type, bytes) rows of a file made another way (a pure probe)."""
    rows = tensor_types(s, quant) if isinstance(quant, str) else quant
    return weights_read_by_type(s, rows) | {"KV": kv_cache_bytes(s, prompt + answer // 2)}


def features(s: ModelShape, quant: str | list, dev: DeviceSpec, prompt: int, answer: int) -> dict:
    """The x of the two linear models (seconds per token at theta = 1); "decode_types" splits the
    decode bandwidth term by the type of the bytes read (it sums to decode[0])."""
    by_type = {t: b / (dev.bandwidth_gbs * 1e9) for t, b in read_by_type(s, quant, prompt, answer).items()}
    return {"decode": (sum(by_type.values()), s.layers * LAYER_S + TOKEN_S),
            "prefill": (flops_per_token(s, prompt) / (dev.compute_gflops * 1e9), s.layers * LAYER_S_PP + TOKEN_S_PP),
            "decode_types": by_type}


def decode_seconds(x: dict, factors: Factors, quant: str) -> float:
    """Seconds per decoded token: each type's bytes at its own efficiency where one is known."""
    file_theta, dispatch = factors.decode_theta(quant)
    if not factors.decode_type:
        return file_theta * x["decode"][0] + dispatch * x["decode"][1]
    read = sum(factors.decode_type.get(t, file_theta) * v for t, v in x["decode_types"].items())
    return read + dispatch * x["decode"][1]


def predict(base: ModelShape, cand: Candidate, dev: DeviceSpec, factors: Factors, prompt: int, answer: int,
            context: int | None = None, kv_bytes_meta: int | None = None) -> Prediction:
    s = cand.shape(base)
    x = features(s, cand.quant, dev, prompt, answer)
    t_tg = decode_seconds(x, factors, cand.quant)
    t_pp = sum(a * b for a, b in zip(factors.prefill_theta(cand.quant), x["prefill"]))
    ctx = context or prompt + answer
    file_b = gguf_bytes(s, cand.quant, kv_bytes_meta)
    kv = kv_cache_bytes(s, ctx)
    static = (file_b + kv + compute_buffer_bytes(s, min(prompt, 512), ctx)
              + repacked_bytes(s, cand.quant, dev.cpu_features))
    return Prediction(file_bytes=file_b, weights_read=weights_read_per_token(s, cand.quant),
                      ram_bytes=static + factors.ram_overhead, ram_static=static, kv_bytes=kv, tg_tps=1.0 / t_tg, pp_tps=1.0 / t_pp, features=x)
