"""Calibration samples are kept per (target, model shape): a run on another model neither reads
nor resets them. Mutant caught: calibration_path ignoring `model` (one file per target), where the
second model's first sample resets the first model's file (a changed fingerprint starts it afresh)
and the first model's efficiencies would predict the second."""

from __future__ import annotations

from edgeprune.targets import calibration as cal
from edgeprune.targets.gguf_size import ModelShape

SMOL = ModelShape(hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, ffn=1536, vocab=49152, tied=True)
LLAMA8B = ModelShape(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, ffn=14336, vocab=128256)


def test_each_model_shape_has_its_own_calibration_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CALIBRATION", str(tmp_path))
    a = cal.calibration_path("host", "local", cal.shape_key(SMOL))
    b = cal.calibration_path("host", "local", cal.shape_key(LLAMA8B))
    assert a != b and a.parent == b.parent == tmp_path
    assert cal.shape_key(SMOL) == "L30-h576-q9-kv3-d64-f1536-v49152-tied"
    assert cal.calibration_path("host", "ssh", cal.shape_key(SMOL)).name == "host.ssh.L30-h576-q9-kv3-d64-f1536-v49152-tied.json"

