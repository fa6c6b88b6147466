"""Importance matrix: collection on calibration text (stages/imatrix.py), llama.cpp's file format
(toolchain/imatrix_file.py), and the export step that hands it to llama_model_quantize."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeprune.config.recipe import Calibration, Export
from edgeprune.stages import imatrix as imatrix_stage
from edgeprune.toolchain import imatrix_file


def test_collect_sums_each_block_linears_squared_inputs(tiny_teacher):
    """The sums are those of the inputs each Linear really sees: recomputed here for layer 0's q_proj
    (the input RMSNorm of the embeddings) and ffn_down (act(gate) * up of the post-attention norm)."""
    model, windows = tiny_teacher
    windows = windows[:3]
    im = imatrix_stage.collect(model, windows)
    n = model.config.num_hidden_layers
    assert len(im.sums) == 7 * n and set(im.sums) == set(im.counts)
    assert all(c == windows.numel() for c in im.counts.values())
    layer = model.model.layers[0]
    seen = {}
    h = layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("down", a[0].detach()))
    with torch.no_grad():
        model(input_ids=windows)
    h.remove()
    with torch.no_grad():
        x_q = layer.input_layernorm(model.model.embed_tokens(windows)).reshape(-1, model.config.hidden_size)
    np.testing.assert_allclose(im.sums["blk.0.attn_q.weight"], (x_q.double() ** 2).sum(0).numpy(), rtol=1e-4)
    x_d = seen["down"].reshape(-1, model.config.intermediate_size).double()
    np.testing.assert_allclose(im.sums["blk.0.ffn_down.weight"], (x_d ** 2).sum(0).numpy(), rtol=1e-4)
    # q, k, v share one input: their rows are identical; the mean is what the quantizer gets
    np.testing.assert_array_equal(im.sums["blk.1.attn_k.weight"], im.sums["blk.1.attn_v.weight"])
    imp = im.importance()["blk.0.attn_q.weight"]
    np.testing.assert_allclose(imp, im.sums["blk.0.attn_q.weight"] / windows.numel(), rtol=1e-6)


def test_file_is_llama_cpps_gguf_layout_and_round_trips(tmp_path):
    import gguf

    im = imatrix_file.IMatrix(sums={"blk.0.ffn_down.weight": np.arange(1, 7, dtype=np.float32),
                                    "blk.0.attn_q.weight": np.full(4, 2.5, dtype=np.float32)},
                              counts={"blk.0.ffn_down.weight": 12, "blk.0.attn_q.weight": 12},
                              datasets=["calib.jsonl"], chunk_count=3, chunk_size=4)
    path = tmp_path / "imatrix.gguf"
    imatrix_file.write(path, im)
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.datasets"].contents() == ["calib.jsonl"]
    assert int(r.fields["imatrix.chunk_count"].contents()) == 3 and int(r.fields["imatrix.chunk_size"].contents()) == 4
    t = {x.name: x for x in r.tensors}
    # ggml's ne: in_sum2 is (row length, 1), counts (1, 1), both F32; names sorted as llama.cpp writes them
    assert list(t["blk.0.ffn_down.weight.in_sum2"].shape) == [6, 1]
    assert list(t["blk.0.ffn_down.weight.counts"].shape) == [1, 1]
    assert {x.tensor_type.name for x in r.tensors} == {"F32"}
    assert [x.name for x in r.tensors][:2] == ["blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts"]
    back = imatrix_file.read(path)
    assert back.counts == im.counts and back.datasets == im.datasets and back.chunk_count == 3
    np.testing.assert_allclose(back.importance()["blk.0.ffn_down.weight"], np.arange(1, 7) / 12, rtol=1e-6)


def test_a_file_that_is_not_an_imatrix_is_refused_in_one_line(tmp_path):
    from edgeprune.errors import ToolchainError

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ToolchainError, match="not a GGUF imatrix file"):
        imatrix_file.read(bad)


def test_export_with_an_imatrix_is_a_cached_step_and_says_so_in_the_gguf(tiny_llama, tmp_path):
    import gguf

    from edgeprune.store import StepStore
    from edgeprune.stages.export import export_gguf
    from edgeprune.stages.load import import_model

    store = StepStore(tmp_path / "store")
    hf_dir, h = import_model(store, tiny_llama)
    cal = Calibration(samples=4, seq_len=64, seed=2)
    path, meta = export_gguf(store, hf_dir, h, Export(quant="Q4_K_M", imatrix=True, imatrix_calibration=cal))
    plain, _ = export_gguf(store, hf_dir, h, Export(quant="Q4_K_M", imatrix=False))
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["quantize.imatrix.file"].contents() == "imatrix.gguf"
    assert int(fields["quantize.imatrix.chunks_count"].contents()) == 4
    assert "quantize.imatrix.file" not in gguf.GGUFReader(str(plain)).fields
    steps = sorted(p.name.split("-")[0] for p in (tmp_path / "store").iterdir() if p.is_dir())
    assert steps.count("imatrix") == 1 and steps.count("export") == 2
    step = json.loads(next((tmp_path / "store").glob("imatrix-*/step.json")).read_text())
    assert step["meta"]["tokens"] == 4 * 64
    # a rerun reuses both steps
    again, _ = export_gguf(store, hf_dir, h, Export(quant="Q4_K_M", imatrix=True, imatrix_calibration=cal))
    assert again == path


def test_imatrix_only_types_need_the_imatrix_on():
    assert Export(quant="IQ2_XS", imatrix=True).uses_imatrix()
    with pytest.raises(ValueError, match="turn the imatrix on"):
        Export(quant="IQ2_XS", imatrix=False)


@pytest.mark.slow  # builds llama-quantize from the vendored sources (~2 min once ggml/libllama are built)
def test_same_bytes_as_llama_quantize_reading_our_file(tiny_llama, tmp_path):
    """llama.cpp's own llama-quantize, given the imatrix FILE edgeprune wrote, writes the same tensor bytes
    as edgeprune's in-process quantize handed the same matrix: the file is in llama.cpp's format and the
    values reach llama_model_quantize as the tool passes them (sums / counts). Guards: a wrong layout
    (ne swapped), unnormalised sums, or names that miss the tensors (llama.cpp then quantizes unweighted)."""
    import shutil
    import subprocess

    from llama_tools import build_tool, vendored_sources

    from edgeprune.toolchain import llamacpp
    from edgeprune.toolchain.converter import bindings_version
    from edgeprune.toolchain.hf import load_model

    if not shutil.which("cmake"):
        pytest.skip("cmake is not installed: cannot build llama.cpp's llama-quantize")
    version = bindings_version()
    src = vendored_sources(version)
    if src is None:
        pytest.skip(f"no llama.cpp sources of llama-cpp-python {version} on disk (see tests/llama_tools.py)")
    exe = build_tool(src, version, "llama-quantize")
    model, tok = load_model(tiny_llama)
    from edgeprune.stages.calib import calibration_windows

    im = imatrix_stage.collect(model, calibration_windows(tok, Calibration(samples=4, seq_len=64)))
    im.datasets = ["c4"]
    imatrix_file.write(tmp_path / "imatrix.gguf", im)
    f16 = tmp_path / "f16.gguf"
    llamacpp.convert_hf_to_gguf(tiny_llama, f16, "f16")
    ours, theirs, plain = tmp_path / "ours.gguf", tmp_path / "theirs.gguf", tmp_path / "plain.gguf"
    llamacpp.quantize(f16, ours, "Q4_K_M", threads=1, imatrix=imatrix_file.read(tmp_path / "imatrix.gguf").importance())
    llamacpp.quantize(f16, plain, "Q4_K_M", threads=1)
    res = subprocess.run([str(exe), "--imatrix", str(tmp_path / "imatrix.gguf"), str(f16), str(theirs), "Q4_K_M", "1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    assert "loaded 28 importance matrix entries" in res.stdout + res.stderr
    a, b, c = (llamacpp.gguf_tensor_data(p) for p in (ours, theirs, plain))
    assert a.keys() == b.keys()
    differ = [n for n in a if a[n] != b[n]]
    assert not differ, differ
    assert any(a[n] != c[n] for n in a if n.startswith("blk."))  # and the imatrix did change them
