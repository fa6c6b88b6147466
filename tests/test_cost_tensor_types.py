"""Per-tensor-type decode efficiency: the cost model splits decode bytes by ggml type, and the
calibration recovers each type's efficiency from pure-type probes, then predicts a pruned file
whose tensor mix (an FFN width that is no multiple of 256: ffn_down falls back to Q5_0 / Q8_0)
none of the calibration samples had."""

from __future__ import annotations

import pytest

from edgeprune.quants import tensor_bytes
from edgeprune.targets.calibration import fit
from edgeprune.targets.costmodel import Candidate, DeviceSpec, Factors, decode_seconds, features, predict, read_by_type
from edgeprune.targets.gguf_size import ModelShape, tensor_list

BASE = ModelShape(hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, ffn=8192, vocab=49152, tied=True)
DEV = DeviceSpec(bandwidth_gbs=20.0, compute_gflops=100.0, threads=2)
# a made-up device whose kernels read each type at its own speed (theta: seconds per prior second)
TRUE = {"Q4_K": 1.3, "Q6_K": 1.8, "Q5_0": 2.4, "Q8_0": 1.1, "Q3_K": 1.6, "Q4_0": 1.0}
DISPATCH = 0.9
P, N = 64, 64


def pure_rows(t: str) -> list:
    """Every weight matrix of type `t`; 1-D tensors and norms stay F32."""
    types = [(name, "F32" if n == ncols or name.endswith("_norm.weight") else t, n) for name, ncols, n in tensor_list(BASE)]
    return [(name, ty, tensor_bytes(ty, n)) for name, ty, n in types]


def measured(x: dict) -> float:
    """tok/s of the made-up device; bytes of types it has no entry for (F32, KV) read at theta 1.5"""
    s = sum(TRUE.get(t, 1.5) * v for t, v in x["decode_types"].items()) + DISPATCH * x["decode"][1]
    return 1.0 / s


def sample(label: str, quant: str, x: dict) -> dict:
    return {"label": label, "quant": quant, "features": x, "tg_tps": measured(x), "pp_tps": 10.0}


def test_decode_types_sum_to_the_bandwidth_term():
    s = Candidate(4, None, 6560, "Q4_K_M").shape(BASE)
    x = features(s, "Q4_K_M", DEV, P, N)
    assert sum(x["decode_types"].values()) == pytest.approx(x["decode"][0], rel=1e-12)
    by = read_by_type(s, "Q4_K_M", P, N)
    assert by["Q5_0"] > 0 and by["Q8_0"] > 0  # 6,560 is no multiple of 256: ffn_down falls back


def test_without_per_type_factors_the_prediction_is_the_file_type_one():
    """decode_type empty: theta . x exactly as before the split."""
    f = Factors(decode=(1.7, 0.8), decode_quant={"Q4_K_M": 1.4})
    x = features(BASE, "Q4_K_M", DEV, P, N)
    assert decode_seconds(x, f, "Q4_K_M") == pytest.approx(1.4 * x["decode"][0] + 0.8 * x["decode"][1], rel=1e-12)


def test_pure_probes_recover_each_types_efficiency_and_predict_an_unseen_mix():
    ref = sample("full Q4_K_M", "Q4_K_M", features(BASE, "Q4_K_M", DEV, P, N))
    probes = [sample(f"pure {t}", f"pure-{t}", features(BASE, pure_rows(t), DEV, P, N)) for t in TRUE]
    per_type = fit([ref, *probes], per_tensor_type=True)
    for t, theta in TRUE.items():
        assert per_type.decode_type[t] == pytest.approx(theta, rel=0.03), t
    cand = Candidate(4, 16, 6560, "Q3_K_M", kv_heads=4)
    truth = measured(features(cand.shape(BASE), cand.quant, DEV, P, N))
    err_type = predict(BASE, cand, DEV, per_type, P, N).tg_tps / truth - 1
    err_file = predict(BASE, cand, DEV, fit([ref]), P, N).tg_tps / truth - 1
    assert abs(err_type) < 0.03
    assert abs(err_file) > 0.10  # one efficiency for every byte misses this mix


def test_a_type_that_is_never_the_bulk_of_a_sample_is_not_fitted():
    """Only the reference: Q4_K is 70 % of its bytes, Q6_K 30 % — Q6_K cannot be told apart."""
    ref = sample("full Q4_K_M", "Q4_K_M", features(BASE, "Q4_K_M", DEV, P, N))
    assert set(fit([ref], per_tensor_type=True).decode_type) == {"Q4_K"}
    assert fit([ref]).decode_type == {}
