"""The RAM model counts ggml-cpu's repacked copies only where llama.cpp repacks (targets/repack.py)."""

from __future__ import annotations

import pytest

from edgeprune.planner.predict_only import load_model_config
from edgeprune.targets import load_target
from edgeprune.targets.costmodel import Candidate, DeviceSpec, Factors, predict, repacked_bytes
from edgeprune.targets.gguf_size import ModelShape, tensor_types
from edgeprune.targets.repack import device_features, host_cpu_features, repacks

SMOL = ModelShape.from_config(load_model_config("smollm2-135m")[0])
X86, ARM, BARE = frozenset({"avx2"}), frozenset({"dotprod"}), frozenset()


def _bytes_of(s: ModelShape, quant: str, ggml_type: str) -> int:
    return sum(b for n, t, b in tensor_types(s, quant) if t == ggml_type and n != "token_embd.weight")


def test_repacked_copy_depends_on_the_cpu_not_on_the_file_alone():
    """Mutant caught: the old rule, Q4_0 and IQ4_NL repacked on every device (arm16g's Q4_K_M and
    Q8_0 copies missed, a CPU without AVX2/dotprod charged a copy llama.cpp never makes)."""
    # x86 AVX2: Q4_0 and Q4_K have repacked kernels, Q5_0/Q6_K/Q8_0 do not
    assert repacked_bytes(SMOL, "Q4_0", X86) == _bytes_of(SMOL, "Q4_0", "Q4_0") > 50e6
    assert repacked_bytes(SMOL, "Q4_K_M", X86) == _bytes_of(SMOL, "Q4_K_M", "Q4_K") > 0
    assert repacked_bytes(SMOL, "Q8_0", X86) == 0
    # ARM dotprod (arm16g): also Q5_K, Q6_K and Q8_0, so the whole Q8_0 file but its embedding
    q4km = sum(_bytes_of(SMOL, "Q4_K_M", t) for t in ("Q4_K", "Q6_K", "Q8_0"))
    assert repacked_bytes(SMOL, "Q4_K_M", ARM) == q4km > repacked_bytes(SMOL, "Q4_K_M", X86)
    assert repacked_bytes(SMOL, "Q8_0", ARM) == _bytes_of(SMOL, "Q8_0", "Q8_0") > 100e6
    # no feature with a repacked kernel: nothing
    assert all(repacked_bytes(SMOL, q, BARE) == 0 for q in ("Q4_0", "Q4_K_M", "IQ4_NL"))
    # AVX-512 adds Q2_K (on Llama-3.1-8B: SmolLM2's 576-wide rows fall back from the 256-block K-quants)
    l8b = ModelShape.from_config(load_model_config("llama-3.1-8b")[0])
    avx512 = repacked_bytes(l8b, "Q2_K", frozenset({"avx2", "avx512"})) - repacked_bytes(l8b, "Q2_K", X86)
    assert avx512 == _bytes_of(l8b, "Q2_K", "Q2_K") > 1e9


def test_arm16g_and_host_predict_different_ram_for_one_gguf():
    arm, host = load_target("arm16g"), load_target("host", {"device.arch": "x86_64"})
    assert device_features(arm.device) == ARM and device_features(host.device) == X86
    ram = {name: predict(SMOL, Candidate(quant="Q8_0"), DeviceSpec.from_target(t), Factors(), 64, 100).ram_bytes
           for name, t in (("arm", arm), ("host", host))}
    assert ram["arm"] - ram["host"] == pytest.approx(_bytes_of(SMOL, "Q8_0", "Q8_0"))


def test_q4_0_over_q4_k_m_matches_the_measured_peak_rss_gap():
    """Measured here (x86, AVX2): SmolLM2 Q4_0 peaks 30-37 MB above Q4_K_M with a 14 MB smaller file.
    Predicted: 38 MB with Q4_K_M's Q4_K copy counted; the old Q4_0-only rule said 46 MB."""
    dev = DeviceSpec(10.0, 50.0, 2, X86)
    gap = (predict(SMOL, Candidate(quant="Q4_0"), dev, Factors(), 64, 100).ram_bytes
           - predict(SMOL, Candidate(quant="Q4_K_M"), dev, Factors(), 64, 100).ram_bytes)
    assert 30e6 <= gap <= 40e6


def test_rows_must_divide_the_kernels_interleave_and_the_embedding_is_never_repacked():
    """Mutants caught: the row-count rule dropped (a K/V weight with 36 rows counted on AVX2, whose
    kernel interleaves 8 rows), or the gathered-from token embedding counted."""
    assert repacks("Q4_0", 576, X86) and not repacks("Q4_0", 36, X86) and repacks("Q4_0", 36, ARM)
    odd = ModelShape(hidden=256, layers=2, heads=4, kv_heads=1, head_dim=36, ffn=512, vocab=1000, tied=True)
    k_v = sum(b for n, t, b in tensor_types(odd, "Q4_0") if n.endswith(("attn_k.weight", "attn_v.weight")))
    assert k_v > 0 and repacked_bytes(odd, "Q4_0", X86) == _bytes_of(odd, "Q4_0", "Q4_0") - k_v
    untied = ModelShape(hidden=256, layers=2, heads=4, kv_heads=2, head_dim=64, ffn=512, vocab=1024, tied=False)
    out = [(t, b) for n, t, b in tensor_types(untied, "Q4_0") if n == "output.weight"]
    assert out[0][0] == "Q6_K"  # an untied head is a matmul weight: repacked where its type is (ARM)
    assert repacked_bytes(untied, "Q4_0", ARM) == _bytes_of(untied, "Q4_0", "Q4_0") + out[0][1]
    assert repacked_bytes(untied, "Q4_0", X86) == _bytes_of(untied, "Q4_0", "Q4_0")


def test_cpu_features_from_cpuinfo_and_the_target(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd crc32 atomics asimddp i8mm\n")
    assert host_cpu_features(x86) == {"avx2", "avx512"} and host_cpu_features(arm) == {"dotprod", "i8mm"}
    assert host_cpu_features(tmp_path / "missing") == frozenset()
    assert device_features(load_target("rpi5-8g", {"device.cpu_features": ["i8mm"]}).device) == {"i8mm"}
    assert device_features(load_target("host").device) == host_cpu_features()  # arch any: this machine
