"""Which weights llama.cpp's CPU backend repacks at load, per CPU feature set.

ggml-cpu copies some weights into an interleaved layout ("CPU_REPACK" extra buffer) when it loads
a model; the mmapped originals were read to make the copy and stay resident, so peak RSS holds
both (measured here: SmolLM2 Q4_0 peaks 30-37 MB above Q4_K_M with a 14 MB smaller file; its
repacked Q4_0 is 60 MB, Q4_K_M's repacked Q4_K 8 MB). The interleaved blocks (block_q4_0x8,
block_q4_Kx8, ...) hold the same bytes as the originals, so a repacked tensor costs its size again.

The rule, read from ggml_repack_get_optimal_repack_type in ggml/src/ggml-cpu/repack.cpp of the
llama.cpp vendored by llama-cpp-python 0.3.36 (the version quants.py follows):
  - only 2-D weights of a MUL_MAT whose input is F32 (extra_buffer_type::supports_op), so never the
    token embedding, which is only gathered from (GET_ROWS), even when it doubles as the tied head;
  - per ggml type, the CPU features that have a repacked kernel, and the row count (ne[1], the
    weight's output size) that kernel's interleave must divide:
      x86 AVX2:     Q4_0, Q4_K, IQ4_NL, MXFP4 (rows % 8); AVX-512 adds Q2_K (rows % 8)
      ARM dotprod:  Q4_0, IQ4_NL, MXFP4, Q8_0, Q1_0 (rows % 4); Q4_K, Q5_K, Q6_K (rows % 8)
      ARM i8mm:     the same types but IQ4_NL and MXFP4 (which want dotprod, present on every i8mm core)
  - no feature in the table (x86 without AVX2, Cortex-A72/A53 without dotprod): nothing repacked.
SVE-256 with i8mm (Q4_0 8x8) and RISC-V vector kernels are left out: no target here has them.
"""

from __future__ import annotations

from pathlib import Path

_ARM_COMMON = {"Q4_0": 4, "Q8_0": 4, "Q1_0": 4, "Q4_K": 8, "Q5_K": 8, "Q6_K": 8}
REPACK_ROWS: dict[str, dict[str, int]] = {
    "avx2": {"Q4_0": 8, "Q4_K": 8, "IQ4_NL": 8, "MXFP4": 8},
    "avx512": {"Q2_K": 8},  # checked with ggml_cpu_has_avx512(); such a CPU also has avx2
    "dotprod": _ARM_COMMON | {"IQ4_NL": 4, "MXFP4": 4},
    "i8mm": dict(_ARM_COMMON),
}
CPU_FEATURES = tuple(REPACK_ROWS)

# What a target that names no cpu_features is assumed to have: AVX2 on every x86-64 server of the
# last decade; dotprod on every ARMv8.2+ core (Neoverse N1 and later, Cortex-A76 and later).
ARCH_DEFAULT = {"x86_64": frozenset({"avx2"}), "aarch64": frozenset({"dotprod"})}

# /proc/cpuinfo flag -> our feature name (x86 "flags", aarch64 "Features")
_PROC_FLAGS = {"avx2": "avx2", "avx512f": "avx512", "asimddp": "dotprod", "i8mm": "i8mm"}


def repacks(ggml_type: str, rows: int, features: frozenset[str]) -> bool:
    """Whether ggml-cpu repacks a 2-D matmul weight of this type with `rows` output rows."""
    return any(rows % need == 0 for f in features if (need := REPACK_ROWS.get(f, {}).get(ggml_type)))


def host_cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This machine's features from /proc/cpuinfo; empty where it cannot be read (then nothing is
    counted as repacked, and the calibrated RAM overhead absorbs what was)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(ours for flag, ours in _PROC_FLAGS.items() if flag in flags)


def device_features(device) -> frozenset[str]:
    """A target's device: its cpu_features, else its arch's default, else (arch any) this machine's."""
    if getattr(device, "cpu_features", None) is not None:
        return frozenset(device.cpu_features)
    arch = getattr(device, "arch", "any")
    return ARCH_DEFAULT[arch] if arch in ARCH_DEFAULT else host_cpu_features()
