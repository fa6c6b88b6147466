"""Export of a model too big to load: the reference logits, the weight check and the imatrix read
the checkpoint one decoder layer at a time (streaming/logits.py, stages/imatrix.collect_streamed)
and must give what the loaded float32 model gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_tiny
from edgeprune.config.recipe import Calibration, Export
from edgeprune.errors import ExportError


@pytest.fixture(scope="module")
def untied(tmp_path_factory, tokenizer_dir):
    return build_tiny(tmp_path_factory.mktemp("untied") / "m", tokenizer_dir, seed=3, tie_word_embeddings=False)


@pytest.mark.parametrize("which", ["tiny_llama", "untied"])
def test_streamed_reference_equals_the_loaded_one(which, request):
    from edgeprune.stages.export import reference

    hf_dir = request.getfixturevalue(which)
    tokens, loaded, header = reference(hf_dir, stream=False)
    tokens_s, streamed, header_s = reference(hf_dir, stream=True)
    assert tokens_s == tokens and header_s == header
    assert np.allclose(streamed, loaded, atol=2e-5, rtol=1e-5)
    assert np.abs(loaded).max() > 0.05  # not a trivially small output


def test_streamed_imatrix_equals_the_loaded_one(tiny_llama):
    from transformers import AutoTokenizer

    from edgeprune.stages.calib import calibration_windows
    from edgeprune.stages.imatrix import collect, collect_streamed
    from edgeprune.toolchain.hf import load_model

    windows = calibration_windows(AutoTokenizer.from_pretrained(tiny_llama), Calibration(samples=6, seq_len=32))
    model, _ = load_model(tiny_llama)
    a, b = collect(model, windows), collect_streamed(tiny_llama, windows)
    assert sorted(a.sums) == sorted(b.sums) and a.counts == b.counts
    for name in a.sums:
        assert np.allclose(b.sums[name], a.sums[name], rtol=1e-4), name


def test_streamed_weight_check_names_the_broken_tensor(tiny_llama, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from edgeprune.stages.export import reference

    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    state = load_file(bad / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match="model.layers.1.mlp.up_proj.weight has 1 non-finite"):
        reference(bad, stream=True)


def test_export_streamed_gives_the_loaded_exports_gguf(tiny_llama, tmp_path):
    from edgeprune.store import StepStore
    from edgeprune.stages.export import export_gguf

    cal = Calibration(samples=4, seq_len=64, seed=2)
    paths = {}
    for stream in (False, True):
        store = StepStore(tmp_path / f"store-{stream}")
        paths[stream], meta = export_gguf(store, tiny_llama, "tiny",
                                          Export(quant="Q4_K_M", imatrix=True, imatrix_calibration=cal, stream=stream))
        assert meta["verify"]["hf_vs_f16"]["cos_min"] > 0.999
    assert paths[True].read_bytes() == paths[False].read_bytes()  # same imatrix, same quantized bytes


def test_auto_streams_when_float32_weights_exceed_the_share():
    from edgeprune.streaming.policy import decide_export_stream

    assert decide_export_stream(None, params=2 * 10**9, available=20 * 10**9).stream  # 8 GB > 6 GB
    assert not decide_export_stream(None, params=10**9, available=20 * 10**9).stream  # 4 GB <= 6 GB
    assert not decide_export_stream(False, params=10**10, available=10**9).stream
