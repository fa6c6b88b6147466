"""Quant types: one spec per llama.cpp file type that the installed `gguf` and llama.cpp both know.

A spec carries its facts: the `llama_ftype` that `llama_model_quantize` takes (gguf's
`LlamaFileType`), the ggml type most weights get (`llama_ftype_get_default_type`), the per-tensor
mixture (`llama_tensor_get_type_impl`) and shape fallback (`tensor_type_fallback`) that the size
model follows, which weights would need an importance matrix, and the export gate and planner prior.
Block sizes come from gguf's `GGML_QUANT_SIZES`; nothing here retypes them.

The rules are those of llama.cpp `src/llama-quant.cpp` as vendored in llama-cpp-python 0.3.36,
for the Llama architecture without experts and without an imatrix (edgeprune never computes one).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from edgeprune import registry
from edgeprune.errors import ConfigError


@dataclass(frozen=True)
class Slot:
    """One weight matrix as llama.cpp's type choice sees it."""

    role: str        # output, token_embd, attn_q/k/v/output, ffn_gate/up/down (tensor_get_category)
    layer: int       # block index (llama.cpp counts attn_v / ffn_down tensors, in layer order)
    ncols: int       # ne[0], the row length that a block type must divide
    n_layers: int
    n_gqa: int       # query heads per KV head (hparams.n_gqa())
    tied: bool       # no output.weight: token_embd takes the output head's type
    llama_70b: bool = False  # 80 layers with GQA: llama.cpp's LLM_TYPE_70B bumps attn_v
    imatrix: bool = False    # quantized with an importance matrix (qs.has_imatrix): some rules differ


Rule = Callable[[Slot], "str | None"]  # the ggml type name for this weight, None: the file's default


def use_more_bits(i: int, n: int) -> bool:
    # C integer division; i < n/8 short-circuits before the (negative) modulo could differ from C's
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def block_size(ggml_type: str) -> int:
    return GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]][0]


def tensor_bytes(ggml_type: str, elements: int) -> int:
    per, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return elements // per * size


def type_bits(ggml_type: str) -> float:
    per, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return 8 * size / per


# tensor_type_fallback: a block type that does not divide a row becomes a 32-block type.
FALLBACK = {**dict.fromkeys(["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"], "IQ4_NL"),
            **dict.fromkeys(["Q2_0", "Q2_K", "Q3_K", "TQ1_0", "TQ2_0"], "Q4_0"),
            "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# tensor_requires_imatrix: types whose quantizer refuses to run without one (never for token_embd/output).
IMATRIX_TYPES = frozenset({"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"})
UNQUANTIZED = frozenset({"F32", "F16", "BF16"})


def fallback_type(t: str, ncols: int, quant: str) -> str:
    if ncols % block_size(t) == 0:
        return t
    if t in FALLBACK:
        t = FALLBACK[t]
    elif block_size(t) > 32:
        raise ConfigError(f"{quant} cannot store a row of {ncols} weights: {t} packs blocks of {block_size(t)} "
                          f"and llama.cpp has no fallback type for it", where="--quant",
                          fix="choose a quant type whose blocks divide the model's hidden size (e.g. Q4_K_M)")
    return t if ncols % block_size(t) == 0 else "F16"


@dataclass(frozen=True)
class QuantSpec:
    name: str                        # the llama.cpp name: Q4_K_M
    ftype: LlamaFileType             # what llama_model_quantize takes
    default: str                     # ggml type of the weights no rule names
    rules: Mapping[str, Rule] = field(default_factory=dict)  # by role
    head: str = "Q6_K"               # output head (and tied embeddings) when its row fits the default's blocks
    bump_70b: bool = True            # LLM_TYPE_70B: attn_v at Q3_K/Q4_K becomes Q5_K
    imatrix_types: frozenset = IMATRIX_TYPES
    summary: str = ""
    ppl_prior: float = 0.0           # ln(ppl ratio vs F16) before anything is measured (planner)
    kld_max: float = 1.0             # export gate: mean KL(F16 || quantized) on the verify prompt
    mixes: tuple = ()                # MixSpecs applied on top of llama.cpp's choice ("Q4_K_M+ends-high")
    imatrix_default: bool = False    # computed and used unless the recipe says otherwise (measured gain)

    @property
    def base(self) -> str:
        """The llama.cpp file type name without the mixes."""
        return self.name.split("+")[0]

    @property
    def quantized(self) -> bool:
        return self.default not in UNQUANTIZED

    @property
    def bits(self) -> float:
        """Bits per weight of the default type (the mixture adds some; gguf_size has the exact figure)."""
        return type_bits(self.default)

    def tensor_type(self, s: Slot) -> str:
        """llama_tensor_get_type for a 2-D weight (1-D tensors and norms stay F32)."""
        if not self.quantized:
            return self.default
        if s.role == "output" or (s.tied and s.role == "token_embd"):
            t = "Q8_0" if s.ncols % block_size(self.default) else self.head
        else:
            rule = self.rules.get(s.role)
            t = (rule(s) if rule else None) or self.default
            if s.role == "attn_v" and self.bump_70b and s.llama_70b and t in ("Q3_K", "Q4_K"):
                t = "Q5_K"
        t = fallback_type(t, s.ncols, self.name)
        for mix in self.mixes:
            t = fallback_type(mix.pick(s, t) or t, s.ncols, self.name)
        return t

    def needs_imatrix(self, slots: list[Slot]) -> bool:
        return any(self.tensor_type(s) in self.imatrix_types for s in slots if s.role not in ("output", "token_embd"))

    @property
    def may_need_imatrix(self) -> bool:
        """On some Llama shape (256-aligned rows, with and without GQA 4), a weight would need one."""
        return any(self.needs_imatrix(_reference_slots(gqa)) for gqa in (1, 4))


def _reference_slots(gqa: int, n_layers: int = 32) -> list[Slot]:
    roles = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    return [Slot(r, i, 4096, n_layers, gqa, False) for i in range(n_layers) for r in roles]


# --- the mixtures (llama_tensor_get_type_impl), as rules per role ---------------------------------

def _always(t: str) -> Rule:
    return lambda s: t


def _more_bits(t: str) -> Rule:
    return lambda s: t if use_more_bits(s.layer, s.n_layers) else None


def _first(t: str, upto: Callable[[int], int], rest: str | None = None) -> Rule:
    """`t` for layers below upto(n_layers), `rest` above."""
    return lambda s: t if s.layer < upto(s.n_layers) else rest


def _gqa(wide: str, narrow: str | None = None) -> Rule:
    """`wide` when 4+ query heads share a KV head (attn_v is then small), else `narrow`."""
    return lambda s: wide if s.n_gqa >= 4 else narrow


def _middle(t: str) -> Rule:
    return lambda s: t if s.n_layers // 8 <= s.layer < 7 * s.n_layers // 8 else None


def _without_imatrix(rule: Rule) -> Rule:
    """A rule llama.cpp applies only when no importance matrix is given."""
    return lambda s: None if s.imatrix else rule(s)


def _with_imatrix(rule: Rule) -> Rule:
    return lambda s: rule(s) if s.imatrix else None


EIGHTH, SIXTEENTH = (lambda n: n // 8), (lambda n: n // 16)


def _iq2_family(low: str, attn_output: str | None) -> dict:
    """IQ1_S/M, IQ2_XXS/XS/S/M: their own branch, before the general per-role rules."""
    return {"attn_v": _gqa("Q4_K", low), "ffn_down": _first(low, EIGHTH), "attn_output": _always(attn_output)
            if attn_output else (lambda s: None)}


# ftype name -> (default ggml type, rules, output head, token_embd type when untied)
MIXTURES: dict[str, tuple[str, dict, str, str | None]] = {
    "F32": ("F32", {}, "F32", None), "F16": ("F16", {}, "F16", None), "BF16": ("BF16", {}, "BF16", None),
    # with an imatrix, the first eighth of ffn_down goes one type up ("guard against craziness")
    "Q4_0": ("Q4_0", {"ffn_down": _with_imatrix(_first("Q4_1", EIGHTH))}, "Q6_K", None),
    "Q4_1": ("Q4_1", {}, "Q6_K", None),
    "Q5_0": ("Q5_0", {"ffn_down": _with_imatrix(_first("Q5_1", EIGHTH))}, "Q6_K", None),
    "Q5_1": ("Q5_1", {}, "Q6_K", None),
    "Q8_0": ("Q8_0", {}, "Q8_0", None), "Q1_0": ("Q1_0", {}, "Q6_K", None), "Q2_0": ("Q2_0", {}, "Q6_K", "Q4_K"),
    "MXFP4_MOE": ("MXFP4", {}, "Q8_0", "Q8_0"),  # dense weights all Q8_0 (see _dense_q8)
    "Q2_K": ("Q2_K", {"attn_v": _gqa("Q4_K", "Q3_K"), "ffn_down": _always("Q3_K"), "attn_output": _always("Q3_K")},
             "Q6_K", None),
    "Q2_K_S": ("Q2_K", {"attn_v": _gqa("Q4_K"), "ffn_down": _first("Q4_K", EIGHTH)}, "Q6_K", None),
    "Q3_K_S": ("Q3_K", {}, "Q6_K", None),
    "Q3_K_M": ("Q3_K", {"attn_v": lambda s: "Q5_K" if s.layer < 2 else "Q4_K",
                        "ffn_down": _first("Q5_K", SIXTEENTH, "Q4_K"), "attn_output": _always("Q4_K")}, "Q6_K", None),
    "Q3_K_L": ("Q3_K", {"attn_v": _always("Q5_K"), "ffn_down": _always("Q5_K"), "attn_output": _always("Q5_K")},
               "Q6_K", None),
    "Q4_K_S": ("Q4_K", {"attn_v": lambda s: "Q5_K" if s.layer < 4 else None, "ffn_down": _first("Q5_K", EIGHTH)},
               "Q6_K", None),
    "Q4_K_M": ("Q4_K", {"attn_v": _more_bits("Q6_K"), "ffn_down": _more_bits("Q6_K")}, "Q6_K", None),
    "Q5_K_S": ("Q5_K", {}, "Q6_K", None),
    "Q5_K_M": ("Q5_K", {"attn_v": _more_bits("Q6_K"), "ffn_down": _more_bits("Q6_K")}, "Q6_K", None),
    "Q6_K": ("Q6_K", {}, "Q6_K", None),
    "IQ2_XXS": ("IQ2_XXS", _iq2_family("Q2_K", None), "Q5_K", "Q2_K"),
    "IQ2_XS": ("IQ2_XS", _iq2_family("Q2_K", None), "Q5_K", "Q2_K"),
    "IQ2_S": ("IQ2_XS", _iq2_family("IQ3_S", "IQ3_S"), "Q5_K", "IQ3_S"),
    "IQ2_M": ("IQ2_S", _iq2_family("IQ3_S", "IQ3_S"), "Q5_K", "IQ3_S"),
    "IQ1_S": ("IQ1_S", _iq2_family("Q2_K", "IQ2_XXS"), "Q5_K", "Q2_K"),
    "IQ1_M": ("IQ1_M", _iq2_family("Q2_K", "IQ2_XXS"), "Q5_K", "Q2_K"),
    "IQ3_XXS": ("IQ3_XXS", {"attn_v": lambda s: "Q4_K" if s.n_gqa >= 4 else "IQ3_XXS" if s.imatrix else "IQ3_S",
                            "attn_k": _always("IQ2_S"), "attn_q": _always("IQ2_S"),
                            "ffn_down": _without_imatrix(_first("Q4_K", EIGHTH, "Q3_K")), "attn_output": _always("IQ3_S")}, "Q5_K", "IQ3_S"),
    "IQ3_XS": ("IQ3_S", {"attn_v": _gqa("Q4_K"), "attn_k": _always("IQ3_XXS"), "attn_q": _always("IQ3_XXS"),
                         "ffn_gate": _middle("IQ3_XXS"), "ffn_up": _middle("IQ3_XXS")}, "Q6_K", None),
    "IQ3_S": ("IQ3_S", {"attn_v": _gqa("Q4_K")}, "Q6_K", None),
    "IQ3_M": ("IQ3_S", {"attn_v": _always("Q4_K"), "ffn_down": _first("Q4_K", EIGHTH), "attn_output": _always("Q4_K")},
              "Q6_K", None),
    "IQ4_NL": ("IQ4_NL", {"attn_v": _gqa("Q5_K"), "ffn_down": _without_imatrix(_first("Q5_K", EIGHTH))}, "Q6_K", None),
    "IQ4_XS": ("IQ4_XS", {"attn_v": _gqa("Q5_K"), "ffn_down": _without_imatrix(_first("Q5_K", EIGHTH))}, "Q6_K", None),
    "TQ1_0": ("TQ1_0", {}, "Q6_K", "Q4_K"), "TQ2_0": ("TQ2_0", {}, "Q6_K", "Q4_K"),
}
# NVFP4 is in gguf's LlamaFileType but llama_ftype_get_default_type has no case for it: the
# quantizer refuses it ("invalid output file type"), so it is not offered.
# The IQ2 family's branch (and MXFP4's) comes before the attn_v rules, so LLM_TYPE_70B's bump skips them.
IQ2_FAMILY = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M")

# Perplexity cost, llama.cpp tools/quantize/quantize.cpp (Llama-3-8B, WikiText-2, vs F16 6.2331).
LLAMA3_8B_PPL_DELTA = {"Q4_0": 0.4685, "Q4_1": 0.4511, "Q5_0": 0.1316, "Q5_1": 0.1062, "Q2_K": 3.5199,
                       "Q2_K_S": 3.1836, "Q3_K_S": 1.6321, "Q3_K_M": 0.6569, "Q3_K_L": 0.5562, "Q4_K_S": 0.2689,
                       "Q4_K_M": 0.1754, "Q5_K_S": 0.1049, "Q5_K_M": 0.0569, "Q6_K": 0.0217, "Q8_0": 0.0026}
# The planner's priors for the types it was first built with: ln(ppl ratio vs F16) from llama.cpp's
# quantize README, LLaMA-7B WikiText-2 (Q8_0 +0.0004, Q5_K_M +0.0142, Q4_K_M +0.0535, Q4_0 +0.2166,
# Q3_K_M +0.2437 on 5.9066), doubled because small models lose more to quantization; replaced by
# measurements. Other types scale Q4_K_M's prior by their Llama-3-8B cost relative to Q4_K_M's.
MEASURED_PRIOR = {"Q8_0": 0.0001, "Q5_K_M": 0.005, "Q4_K_M": 0.018, "Q4_0": 0.072, "Q3_K_M": 0.080}
# Export gate, mean KL(F16 || quant) in nats. Q4_K_M: SmolLM2-135M and its depth-pruned variants
# measured 0.07-0.37, so 0.5 leaves headroom while catching a broken quantization (a wrong tensor type
# or scale gives KL >> 1). Other types: log-linear in the default type's bits per weight through these.
MEASURED_KLD_MAX = {"Q8_0": 0.1, "Q5_K_M": 0.35, "Q4_K_M": 0.5, "Q4_0": 0.6, "Q3_K_M": 1.0}


def _ppl_prior(name: str, bits: float) -> float:
    if name in MEASURED_PRIOR:
        return MEASURED_PRIOR[name]
    if bits >= 16:
        return 0.0
    # IQ/TQ types have no published cost: take that of the k-quant nearest in bits per weight
    near = name if name in LLAMA3_8B_PPL_DELTA else \
        min(LLAMA3_8B_PPL_DELTA, key=lambda q: abs(type_bits(MIXTURES[q][0]) - bits))
    return MEASURED_PRIOR["Q4_K_M"] * LLAMA3_8B_PPL_DELTA[near] / LLAMA3_8B_PPL_DELTA["Q4_K_M"]


def ppl_prior_source(name: str) -> str:
    """Where a type's planner prior (QuantSpec.ppl_prior) came from, as _ppl_prior chose it."""
    if "+" in name:
        return f"its type's ({get(name).base}) x the mix's share of its quantization noise (sum n 4^-bits)"
    if name in MEASURED_PRIOR:
        return ("llama.cpp's quantize README table (LLaMA-7B, WikiText-2), doubled for small models")
    if get(name).bits >= 16:
        return "unquantized: no cost"
    return "Q4_K_M's prior scaled by llama.cpp's Llama-3-8B perplexity table (tools/quantize/quantize.cpp)"


def _kld_max(name: str, bits: float) -> float:
    if name in MEASURED_KLD_MAX:
        return MEASURED_KLD_MAX[name]
    # (bits, ln kld) through the measured types; Q4_0 has Q4_K's bits, so it is left out
    pts = sorted((type_bits(MIXTURES[q][0]), math.log(v)) for q, v in MEASURED_KLD_MAX.items() if q != "Q4_0")
    if bits <= pts[0][0]:
        lo, hi = pts[0], pts[1]
    elif bits >= pts[-1][0]:
        lo, hi = pts[-2], pts[-1]
    else:
        lo, hi = next((a, b) for a, b in zip(pts, pts[1:]) if a[0] <= bits <= b[0])
    slope = (hi[1] - lo[1]) / (hi[0] - lo[0])
    # floored: an unquantized copy still computes in another precision (F32 vs F16 matmuls)
    return max(0.01, round(math.exp(lo[1] + slope * (bits - lo[0])), 4))


# Mean KLD vs F16 without / with an imatrix on SmolLM2-135M (bench/out/quant/imatrix.json: llama.cpp's
# --kl-divergence protocol, 16 x 512 WikiText-2 chunks, uncertainty <= 2 % of each): the imatrix lowered
# it by 25-91 % for every type measured, so it is on by default for these and for the types that need one.
IMATRIX_MEASURED = {"Q4_K_M": (0.0580, 0.0365), "Q3_K_M": (0.1470, 0.0923), "Q2_K": (0.4371, 0.2969),
                    "Q4_0": (0.3104, 0.1843), "Q5_K_M": (0.0780, 0.0070), "Q6_K": (0.0102, 0.0077)}


def _imatrix_default(spec: QuantSpec) -> bool:
    plain, weighted = IMATRIX_MEASURED.get(spec.name, (0.0, 0.0))
    return weighted < 0.9 * plain or spec.may_need_imatrix


def _summary(spec: QuantSpec) -> str:
    cost = LLAMA3_8B_PPL_DELTA.get(spec.name)
    parts = [f"{spec.default} {spec.bits:.3g} bpw" + (" mixture" if spec.rules else "")]
    if cost is not None:
        parts.append(f"+{cost} ppl @ Llama-3-8B")
    if spec.may_need_imatrix:
        parts.append("needs an imatrix (on by default)")
    elif spec.name in IMATRIX_MEASURED:
        parts.append("imatrix on by default")
    return ", ".join(parts)


# --- per-tensor type mixes: named changes on top of llama.cpp's own choice ----------------------

# One step up or down stays in the block family that fits the row: 256-wide k-quants, or the
# 32-wide legacy types for rows like SmolLM2's 576 (where llama.cpp's k-types fall back to these).
LADDERS = {256: ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"), 32: ("Q4_0", "Q5_0", "Q8_0")}


def step(t: str, ncols: int, by: int) -> str:
    """The type `by` rungs above (below, if negative) `t` in bits per weight, on the ladder whose
    blocks divide a row of `ncols`; unquantized and top/bottom types stay."""
    if t in UNQUANTIZED:
        return t
    ladder = LADDERS[256] if ncols % 256 == 0 else LADDERS[32]
    bits = type_bits(t)
    if by > 0:
        higher = [x for x in ladder if type_bits(x) > bits]
        return higher[min(by, len(higher)) - 1] if higher else t
    lower = [x for x in ladder if type_bits(x) < bits]
    return lower[max(by, -len(lower))] if lower else t


def _is_head(s: Slot) -> bool:
    return s.role == "output" or (s.tied and s.role == "token_embd")


def _ends(s: Slot) -> bool:
    return s.layer < s.n_layers // 8 or s.layer >= 7 * s.n_layers // 8


@dataclass(frozen=True)
class MixSpec:
    """A named per-tensor mix: `pick(slot, type llama.cpp chose)` gives the new type, or None to keep
    it. Applied as exact-name tensor overrides (llama_model_quantize_params.tt_overrides)."""

    name: str
    summary: str
    pick: Callable[[Slot, str], "str | None"]


def _mix(name: str, summary: str, pick: Callable[[Slot, str], "str | None"]) -> MixSpec:
    spec = MixSpec(name, summary, pick)
    registry.register("mix", name)(spec)
    return spec


MIXES: dict[str, MixSpec] = {m.name: m for m in (
    _mix("embd-out-high", "output head and token embeddings one type up",
         lambda s, t: step(t, s.ncols, 1) if s.role in ("output", "token_embd") else None),
    _mix("head-low", "output head (and tied embeddings) one type down: the head is most of a small model's "
         "decode bytes", lambda s, t: step(t, s.ncols, -1) if _is_head(s) else None),
    _mix("ends-high", "every weight of the first and last eighth of the layers one type up",
         lambda s, t: step(t, s.ncols, 1) if s.role not in ("output", "token_embd") and _ends(s) else None),
    _mix("v-down-high", "attn_v and ffn_down one type up in every layer",
         lambda s, t: step(t, s.ncols, 1) if s.role in ("attn_v", "ffn_down") else None),
)}


def _build() -> dict[str, QuantSpec]:
    specs = {}
    for ftype in LlamaFileType:
        name = ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        if name not in MIXTURES or MIXTURES[name][0] not in GGMLQuantizationType.__members__:
            continue  # a type this gguf or this llama.cpp does not know
        default, rules, head, embd = MIXTURES[name]
        rules = dict(rules, **({"token_embd": _always(embd)} if embd else {}))
        if name == "MXFP4_MOE":  # llama.cpp quantizes only 3-D expert tensors to MXFP4
            rules = {r: _always("Q8_0") for r in ("token_embd", "attn_q", "attn_k", "attn_v", "attn_output",
                                                   "ffn_gate", "ffn_up", "ffn_down")}
        bits = type_bits(default)
        spec = QuantSpec(name, ftype, default, rules, head, bump_70b=name not in IQ2_FAMILY + ("MXFP4_MOE",),
                         imatrix_types=IMATRIX_TYPES | ({"Q2_K"} if name == "Q2_K_S" else set()),
                         ppl_prior=_ppl_prior(name, bits), kld_max=_kld_max(name, bits))
        specs[name] = spec
    for spec in specs.values():
        object.__setattr__(spec, "summary", _summary(spec))
        object.__setattr__(spec, "imatrix_default", _imatrix_default(spec))
        registry.register("quant", spec.name)(spec)
    return specs


SPECS: dict[str, QuantSpec] = _build()


def names(usable_only: bool = False) -> list[str]:
    return [n for n, s in SPECS.items() if not (usable_only and s.may_need_imatrix)]


def get(name: str, where: str = "--quant") -> QuantSpec:
    """The spec of a quant type; a typo answers "did you mean", an imatrix type says so."""
    if "+" in name:
        return _with_mixes(name, where)
    spec = SPECS.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(SPECS), n=1) or difflib.get_close_matches(
            name.upper(), list(SPECS), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(names(True))}"
        raise ConfigError(f"unknown quant type '{name}'", where=where, fix=hint)
    return spec


def _with_mixes(name: str, where: str) -> QuantSpec:
    base, *mix_names = name.split("+")
    spec = get(base, where)
    mixes = []
    for m in mix_names:
        if m not in MIXES:
            close = difflib.get_close_matches(m, list(MIXES), n=1)
            raise ConfigError(f"unknown quant mix '{m}' in '{name}'", where=where,
                              fix=f"did you mean '{close[0]}'?" if close else f"choose of: {', '.join(MIXES)}")
        mixes.append(MIXES[m])
    return replace(spec, name=name, mixes=tuple(mixes))


def usable(name: str, where: str = "--quant", imatrix: bool = False) -> QuantSpec:
    """A spec edgeprune can quantize to: known, and needing an importance matrix only if one is given."""
    spec = get(name, where)
    if spec.may_need_imatrix and not imatrix:
        raise ConfigError(f"{name} needs an importance matrix (imatrix)", where=where,
                          fix="turn the imatrix on (--imatrix, or export.imatrix: true in the recipe), or choose "
                              "a type without one, e.g. IQ3_S, IQ4_XS, Q2_K or Q3_K_S")
    return spec
