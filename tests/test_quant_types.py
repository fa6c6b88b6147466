"""Quant types as specs (edgeprune/quants.py): contract tests over every registered name.

The size model is checked against llama.cpp itself: tiny Llama shapes are written straight to an
F16 GGUF (gguf-py, a 256-token vocabulary, random weights) and quantized by llama_model_quantize;
every tensor's type and byte count must match the prediction exactly. Going through the HF fixture
and the converter instead costs ~25 s here, because SmolLM2's 49k-token embedding dominates every
quantization; that whole-file check runs in the slow tier (test_tiny_fixture_files_...).
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest

from edgeprune import quants, registry
from edgeprune.errors import ConfigError
from edgeprune.targets.gguf_size import ModelShape, gguf_bytes, tensor_list, tensor_types

# A: 256-wide rows keep every block type, GQA 4, 8 layers (n/8 = 1), untied head.
# B: 128-wide rows force the 32-block fallbacks, GQA 2, 16 layers (n/16 = 1), tied embeddings.
SHAPES = {"A": ModelShape(hidden=256, layers=8, heads=8, kv_heads=2, head_dim=32, ffn=256, vocab=256),
          "B": ModelShape(hidden=128, layers=16, heads=4, kv_heads=2, head_dim=32, ffn=256, vocab=256, tied=True)}
USABLE = quants.names(usable_only=True)
NEEDS_IMATRIX = [n for n in quants.names() if n not in USABLE]


def write_f16_gguf(path, s: ModelShape) -> None:
    """What llama_model_quantize reads of a Llama GGUF: hparams and tensors (it never loads the vocab)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(s.layers)
    w.add_context_length(256)
    w.add_embedding_length(s.hidden)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_rope_dimension_count(s.head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(0)
    for name, ncols, n in tensor_list(s):
        if n == ncols:
            w.add_tensor(name, np.ones(n, dtype=np.float32))
        else:
            w.add_tensor(name, (0.02 * rng.standard_normal((n // ncols, ncols))).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def f16_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant-contract")
    out = {}
    for tag, shape in SHAPES.items():
        out[tag] = d / f"{tag}.f16.gguf"
        write_f16_gguf(out[tag], shape)
    return out


def real_tensors(path) -> dict[str, tuple[str, int]]:
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in GGUFReader(str(path)).tensors}


# --- the registry ---------------------------------------------------------------------------------

def test_registry_offers_the_llama_cpp_types_edgeprune_needs():
    for name in ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q3_K_M", "Q3_K_S",
                 "Q3_K_L", "Q2_K", "IQ4_XS"):
        assert name in USABLE
    assert {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "Q2_K_S"} <= set(NEEDS_IMATRIX)
    assert registry.names("quant") == sorted(quants.names())


@pytest.mark.parametrize("name", quants.names())
def test_spec_file_type_is_llama_cpps(name):
    """gguf's LlamaFileType is what the installed llama.cpp calls the type; block sizes are gguf's."""
    import llama_cpp
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    spec = quants.get(name)
    prefix = "LLAMA_FTYPE_ALL_" if name == "F32" else "LLAMA_FTYPE_MOSTLY_"
    assert getattr(llama_cpp, prefix + name) == int(spec.ftype)
    assert spec.bits == 8 * GGML_QUANT_SIZES[GGMLQuantizationType[spec.default]][1] / \
        GGML_QUANT_SIZES[GGMLQuantizationType[spec.default]][0]
    assert spec.summary and spec.kld_max > 0 and spec.ppl_prior >= 0


def test_imatrix_is_on_by_default_where_it_was_measured_to_help():
    """On for the six types bench/out/quant/imatrix.json measured (KLD vs F16 down 25-91 %) and the types
    that need one; off for the rest (Q8_0: its quantizer ignores an imatrix)."""
    on = {n for n, s in quants.SPECS.items() if s.imatrix_default}
    assert set(quants.IMATRIX_MEASURED) <= on and set(NEEDS_IMATRIX) <= on
    assert not {"Q8_0", "F16", "Q5_0", "IQ4_XS"} & on
    assert quants.get("Q4_K_M+head-low").imatrix_default


def test_a_typo_answers_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'Q4_K_M'"):
        quants.get("Q4KM")
    with pytest.raises(ConfigError, match="did you mean 'Q6_K'"):
        quants.get("q6_k")


def test_a_type_that_needs_an_imatrix_says_so_in_the_recipe():
    from edgeprune.config.recipe import Export, Search

    assert Export(quant="Q6_K").quant == "Q6_K" and Search(quants=["Q2_K", "IQ4_XS"]).quants == ["Q2_K", "IQ4_XS"]
    assert Export(quant="IQ2_XXS").uses_imatrix()  # needs one: on by default
    with pytest.raises(ValueError, match="importance matrix"):
        Export(quant="IQ2_XXS", imatrix=False)
    with pytest.raises(ValueError, match="did you mean 'Q5_K_M'"):
        Search(quants=["Q5_KM"])


def test_smollm2_keeps_the_mixture_and_the_fallbacks():
    smol = ModelShape(hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, ffn=1536, vocab=49152, tied=True)
    types = {n: t for n, t, _ in tensor_types(smol, "Q6_K")}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.ffn_down.weight"] == "Q6_K"  # 576 / 1536 rows
    types = {n: t for n, t, _ in tensor_types(smol, "Q2_K")}
    assert types["blk.5.attn_v.weight"] == "Q4_0"      # Q3_K (GQA 3 < 4) -> Q4_0 on 576-wide rows
    assert types["blk.5.ffn_down.weight"] == "Q3_K"    # 1536 % 256 == 0
    with pytest.raises(ConfigError, match="Q1_0 cannot store a row of 576"):
        gguf_bytes(smol, "Q1_0")                      # llama.cpp has no fallback for 128-blocks either


# `edgeprune export --quant Q` of SmolLM2-135M-Instruct with 2 layers removed (block-influence),
# llama-cpp-python 0.3.36 here; the size model is within 0.005 % of each and has every tensor's type.
SMOL_28L_MEASURED = {"Q6_K": 131_280_768, "Q8_0": 137_280_384, "Q2_K": 84_445_056, "Q5_K_M": 106_895_232}


@pytest.mark.parametrize("name", sorted(SMOL_28L_MEASURED))
def test_smollm2_exports_are_predicted_within_0p1_percent(name):
    smol = ModelShape(hidden=576, layers=28, heads=9, kv_heads=3, head_dim=64, ffn=1536, vocab=49152, tied=True)
    assert abs(gguf_bytes(smol, name) - SMOL_28L_MEASURED[name]) / SMOL_28L_MEASURED[name] < 0.001


def test_llama70b_bumps_attn_v_and_iq2_does_not():
    s = ModelShape(hidden=8192, layers=80, heads=64, kv_heads=8, head_dim=128, ffn=28672, vocab=128256)
    types = {n: t for n, t, _ in tensor_types(s, "Q3_K_S")}
    assert types["blk.40.attn_v.weight"] == "Q5_K" and types["blk.40.attn_q.weight"] == "Q3_K"
    assert {n: t for n, t, _ in tensor_types(s, "IQ2_XXS")}["blk.40.attn_v.weight"] == "Q4_K"


# --- the contract: prediction == llama.cpp, for every registered name ------------------------------

@pytest.mark.parametrize("name", USABLE)
def test_size_model_matches_llama_cpp_tensor_by_tensor(name, f16_files, tmp_path):
    from edgeprune.toolchain.llamacpp import quantize

    for tag, shape in SHAPES.items():
        out = tmp_path / f"{tag}.{name}.gguf"
        quantize(f16_files[tag], out, name, threads=2)
        real = real_tensors(out)
        pred = {n: (t, b) for n, t, b in tensor_types(shape, name)}
        wrong = {n: (pred.get(n), real[n]) for n in real if pred.get(n) != real[n]}
        assert not wrong and len(pred) == len(real), (tag, wrong)


@pytest.mark.parametrize("name", NEEDS_IMATRIX)
def test_imatrix_types_are_refused_here_and_by_llama_cpp(name, f16_files, tmp_path):
    import llama_cpp

    from edgeprune.toolchain.llamacpp import quantize, quiet_stderr

    with pytest.raises(ConfigError, match="importance matrix"):
        quantize(f16_files["A"], tmp_path / "x.gguf", name)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(quants.get(name).ftype)
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(f16_files["A"]).encode(), str(tmp_path / "y.gguf").encode(),
                                            ctypes.byref(params))
    assert rc != 0  # "this quantization requires an imatrix!"


@pytest.mark.slow  # converter + every usable type on the HF fixture: ~25 s idle
def test_tiny_fixture_files_are_predicted_within_0p1_percent(tiny_llama, tmp_path):
    from edgeprune.toolchain.llamacpp import convert_hf_to_gguf, quantize

    f16 = tmp_path / "tiny.f16.gguf"
    convert_hf_to_gguf(tiny_llama, f16, "f16")
    shape = ModelShape.from_config(json.loads((tiny_llama / "config.json").read_text()))
    for name in USABLE:
        out = tmp_path / f"tiny.{name}.gguf"
        quantize(f16, out, name, threads=2)
        real = out.stat().st_size
        assert abs(gguf_bytes(shape, name) - real) / real < 0.001, name
        out.unlink()


# --- with an importance matrix, and with per-tensor mixes ------------------------------------------

def synthetic_imatrix(s: ModelShape) -> dict[str, np.ndarray]:
    """Positive per-column weights for every block matrix (what stages/imatrix.py collects)."""
    rng = np.random.default_rng(1)
    return {name: rng.uniform(0.1, 2.0, ncols).astype(np.float32) for name, ncols, n in tensor_list(s)
            if name.startswith("blk.") and n != ncols}


@pytest.mark.parametrize("name", quants.names())
def test_size_model_matches_llama_cpp_with_an_imatrix(name, f16_files, tmp_path):
    """Every type, the imatrix-only ones too, quantized with an imatrix: llama.cpp's rules that change
    with one (Q4_0/Q5_0's first ffn_down, IQ3_XXS's attn_v, IQ4's ffn_down) are the size model's."""
    from edgeprune.toolchain.llamacpp import quantize

    for tag, shape in SHAPES.items():
        if name in ("Q1_0",) and tag == "B":
            continue  # 128-blocks on 128-wide rows only (shape A covers it)
        out = tmp_path / f"{tag}.{name}.gguf"
        try:
            tensor_types(shape, name, imatrix=True)
        except ConfigError:
            continue  # no fallback for these rows: refused before llama.cpp is asked (tested above)
        quantize(f16_files[tag], out, name, threads=2, imatrix=synthetic_imatrix(shape))
        real = real_tensors(out)
        pred = {n: (t, b) for n, t, b in tensor_types(shape, name, imatrix=True)}
        wrong = {n: (pred.get(n), real[n]) for n in real if pred.get(n) != real[n]}
        assert not wrong and len(pred) == len(real), (tag, wrong)


def test_an_imatrix_changes_the_quantized_weights_not_the_types(f16_files, tmp_path):
    from edgeprune.toolchain.llamacpp import quantize

    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    quantize(f16_files["A"], plain, "Q4_K_M", threads=2)
    quantize(f16_files["A"], weighted, "Q4_K_M", threads=2, imatrix=synthetic_imatrix(SHAPES["A"]),
             meta={"quantize.imatrix.entries_count": 56})
    from gguf import GGUFReader

    a, b = GGUFReader(str(plain)), GGUFReader(str(weighted))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert {n: t.tensor_type for n, t in ta.items()} == {n: t.tensor_type for n, t in tb.items()}
    assert not np.array_equal(ta["blk.3.ffn_up.weight"].data, tb["blk.3.ffn_up.weight"].data)
    assert np.array_equal(ta["token_embd.weight"].data, tb["token_embd.weight"].data)  # no entry: unweighted
    assert int(b.fields["quantize.imatrix.entries_count"].contents()) == 56


SMOL = ModelShape(hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, ffn=1536, vocab=49152, tied=True)


def test_mixes_move_the_tensors_they_name_one_type():
    base = {n: t for n, t, _ in tensor_types(SMOL, "Q4_K_M")}
    ends = {n: t for n, t, _ in tensor_types(SMOL, "Q4_K_M+ends-high")}
    head = {n: t for n, t, _ in tensor_types(SMOL, "Q4_K_M+head-low")}
    assert base["blk.0.attn_q.weight"] == "Q5_0" and ends["blk.0.attn_q.weight"] == "Q8_0"  # 32-block ladder
    assert base["blk.29.ffn_down.weight"] == "Q6_K" and ends["blk.29.ffn_down.weight"] == "Q8_0"
    assert base["blk.15.ffn_up.weight"] == ends["blk.15.ffn_up.weight"] == "Q5_0"  # middle layers kept
    assert base["token_embd.weight"] == "Q8_0" and head["token_embd.weight"] == "Q5_0"  # tied head, one down
    assert {n for n in base if base[n] != head[n]} == {"token_embd.weight"}
    assert gguf_bytes(SMOL, "Q4_K_M+head-low") < gguf_bytes(SMOL, "Q4_K_M") < gguf_bytes(SMOL, "Q4_K_M+ends-high")


def test_an_unknown_mix_answers_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'ends-high'"):
        quants.get("Q4_K_M+end-high")
    assert quants.get("Q4_K_M+head-low+ends-high").mixes == (quants.MIXES["head-low"], quants.MIXES["ends-high"])


MIX_CASES = [f"{q}+{m}" for q in ("Q4_K_M", "Q4_0", "Q2_K") for m in quants.MIXES] + ["Q3_K_M+head-low+ends-high"]


@pytest.mark.parametrize("name", MIX_CASES)
def test_export_quantizes_a_mix_to_the_size_models_types(name, f16_files, tmp_path):
    """The export stage's overrides (stages/export.quantize_inputs) make llama.cpp write what the size
    model predicts, tensor by tensor, for every registered mix."""
    from edgeprune.stages.export import quantize_inputs
    from edgeprune.toolchain.llamacpp import quantize

    for tag, shape in SHAPES.items():
        types = tensor_types(shape, name)
        out = tmp_path / f"{tag}.gguf"
        quantize(f16_files[tag], out, name, threads=2, **quantize_inputs(quants.get(name), types, None))
        real = real_tensors(out)
        wrong = {n: (t, b, real[n]) for n, t, b in types if real[n] != (t, b)}
        assert not wrong, (tag, wrong)
