"""Export stage: HF -> F16 GGUF (llama.cpp converter) -> quantized GGUF, verified on the way.

Gates (each failure raises ExportError and nothing is published):
  * the F16 GGUF's next-token logits agree with the HF model on a fixed prompt
    (cosine >= `logits_cos_min`, top-1 agreement reported);
  * both GGUFs pass the structure check (toolchain/gguf_check.py): header block/head counts
    match the HF config, every block has the same tensors, the quantized file has as many
    tensors as the F16 one, and no tensor's bytes run past the end of the file;
  * the quantized GGUF's next-token distributions stay close to the F16 GGUF's: mean
    KL(F16 || quant) <= `kld_max` (the quant type's default: edgeprune/quants.py);
  * before writing, free disk must hold the F16 + quantized files (estimated from the
    safetensors headers).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgeprune import quants
from edgeprune.config.recipe import Export
from edgeprune.errors import ExportError
from edgeprune.store import StepStore
from edgeprune.store.step_store import file_hash
from edgeprune.stages.imatrix import imatrix_step
from edgeprune.targets.gguf_size import ModelShape, tensor_types
from edgeprune.toolchain import imatrix_file, llamacpp
from edgeprune.toolchain.checkpoint import checkpoint_tensors, parameter_count
from edgeprune.toolchain.gguf_check import check_finite, check_gguf
from edgeprune.toolchain.hf import load_model
from edgeprune.streaming.logits import named_weights, streamed_logits
from edgeprune.streaming.policy import decide_export_stream

VERIFY_PROMPT = ("The tower is 324 metres tall, about the same height as an 81-storey building, "
                 "and the tallest structure in Paris. Its base is square, measuring 125 metres on each side.")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare_logits(ref: np.ndarray, test: np.ndarray) -> dict:
    """Agreement of two (tokens x vocab) logit matrices: cosine, top-1, max |diff|, mean KL(ref||test)."""
    a, b = ref.astype(np.float64), test.astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    lp, lq = _log_softmax(a), _log_softmax(b)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"cos_min": float(cos.min()), "top1_agree": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "max_abs_diff": float(np.abs(a - b).max()), "kld_mean": float(kl.mean()), "positions": len(a)}


def hf_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0].float().numpy()


class Phases:
    """Wall seconds of each export phase and the process's peak RSS when it ended (ru_maxrss only
    grows, so the phase where it jumps is the one that set it); the converter runs as a child
    process, whose peak is reported apart."""

    def __init__(self):
        self._last, self.record = time.perf_counter(), {}

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.record[name] = {"s": round(now - self._last, 1),
                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                             "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}
        self._last = now


def export_gguf(store: StepStore, hf_dir: Path, hf_hash: str, cfg: Export) -> tuple[Path, dict]:
    llamacpp.require_llama_cpp()
    use_imatrix = cfg.uses_imatrix()
    spec = quants.usable(cfg.quant, imatrix=use_imatrix)
    kld_max = cfg.kld_max if cfg.kld_max is not None else spec.kld_max
    # fail before converting when llama.cpp could not quantize these shapes (e.g. Q1_0 on 576-wide rows)
    types = tensor_types(ModelShape.from_config(json.loads((hf_dir / "config.json").read_text())), cfg.quant,
                         use_imatrix)
    phases = Phases()
    params = parameter_count(checkpoint_tensors(hf_dir))
    stream = decide_export_stream(cfg.stream, params)
    im_path = imatrix_step(store, hf_dir, hf_hash, cfg.imatrix_calibration, stream.stream) if use_imatrix else None
    phases.done("imatrix")

    def build(out: Path) -> dict:
        bar = tqdm(total=4, desc=f"export {cfg.quant}", unit="step")
        tokens, ref, expect = reference(hf_dir, stream.stream)
        check_finite([("of the HF model", ref)], str(hf_dir), "the verify prompt's logits")
        phases.done("reference logits (streamed)" if stream.stream else "load and reference logits")
        f16 = out / "converted.F16.gguf"  # not model.F16.gguf: --quant F16 writes that, and must not read itself
        bar.set_postfix_str("convert F16")
        llamacpp.convert_hf_to_gguf(hf_dir, f16, "f16")
        f16_meta = llamacpp.gguf_metadata(f16)
        check_gguf(f16, f16_meta, expect)
        phases.done("convert F16")
        bar.update()
        bar.set_postfix_str("verify F16")
        f16_logits = llamacpp.gguf_logits(f16, tokens)
        check_finite([("of the F16 GGUF", f16_logits)], str(hf_dir), "the verify prompt's logits")
        f16_vs_hf = compare_logits(ref, f16_logits)
        if not f16_vs_hf["cos_min"] >= cfg.logits_cos_min:  # `not >=` also catches NaN
            raise ExportError(f"F16 GGUF logits disagree with the HF model (cos {f16_vs_hf['cos_min']:.4f} "
                              f"< {cfg.logits_cos_min})", where=str(hf_dir), fix="report a converter bug")
        phases.done("verify F16")
        bar.update()
        bar.set_postfix_str(f"quantize {cfg.quant}")
        quant = out / f"model.{cfg.quant}.gguf"
        llamacpp.quantize(f16, quant, cfg.quant, **quantize_inputs(spec, types, im_path))
        phases.done("quantize")
        bar.update()
        bar.set_postfix_str("verify quantized")
        meta = llamacpp.gguf_metadata(quant)
        check_gguf(quant, meta, {**expect, "tensor_count": f16_meta["tensor_count"]})
        q_vs_f16 = compare_logits(f16_logits, llamacpp.gguf_logits(quant, tokens))
        if not q_vs_f16["kld_mean"] <= kld_max:  # `not <=` also catches NaN
            raise ExportError(f"{cfg.quant} GGUF drifts from F16: mean KL {q_vs_f16['kld_mean']:.3f} > {kld_max}",
                              where=str(hf_dir), fix="use a higher-precision quant (e.g. Q5_K_M, Q8_0), or raise "
                              "export.kld_max in the recipe if this drift is acceptable")
        f16.unlink()  # 2-4x the quantized size; reproducible from the step key
        phases.done("verify quantized")
        bar.update()
        bar.close()
        verify = {"prompt_tokens": len(tokens), "hf_vs_f16": f16_vs_hf, "quant_vs_f16": q_vs_f16,
                  "tolerance": {"hf_vs_f16_cos_min": cfg.logits_cos_min, "quant_vs_f16_kld_max": kld_max},
                  "gguf": meta, "phases": phases.record}
        (out / "verify.json").write_text(json.dumps(verify, indent=2, default=str))
        return {"gguf": quant.name, "bytes": quant.stat().st_size, "layers": expect["llama.block_count"],
                "verify": verify}

    key = {"model": hf_hash, "export": cfg.model_dump(mode="json")}
    if im_path is not None:
        key["imatrix"] = file_hash(im_path)
    res = store.run("export", key, build,
                    need_bytes=export_bytes_needed(params, spec))
    return res.path / res.meta["gguf"], res.meta


def reference(hf_dir: Path, stream: bool) -> tuple[list[int], np.ndarray, dict]:
    """(verify prompt tokens, the HF model's float32 logits on them, the GGUF header it implies),
    every weight checked finite on the way: loaded whole, or read one layer at a time."""
    from transformers import AutoConfig, AutoTokenizer

    if not stream:
        model, tok = load_model(hf_dir)
        check_finite(model.state_dict().items(), str(hf_dir), "weight")
        tokens = tok(VERIFY_PROMPT, add_special_tokens=False)["input_ids"]
        return tokens, hf_logits(model, tokens), expected_header(model.config)
    check_finite(named_weights(hf_dir), str(hf_dir), "weight")
    tok = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=False)
    tokens = tok(VERIFY_PROMPT, add_special_tokens=False)["input_ids"]
    return tokens, streamed_logits(hf_dir, tokens), expected_header(AutoConfig.from_pretrained(hf_dir))


def quantize_inputs(spec: quants.QuantSpec, types: list[tuple[str, str, int]], im_path: Path | None) -> dict:
    """llamacpp.quantize's imatrix, per-tensor types (when the spec has mixes: every quantized weight is
    named, since llama.cpp's layer counters skip overridden tensors) and the metadata that says so."""
    out: dict = {}
    if spec.mixes:
        out["types"] = {n: t for n, t, _ in types if t != "F32"}
    if im_path is not None:
        im = imatrix_file.read(im_path)
        out["imatrix"] = im.importance()
        # the keys llama-quantize writes for an imatrix (tools/quantize/quantize.cpp)
        out["meta"] = {"quantize.imatrix.file": im_path.name, "quantize.imatrix.dataset": im.datasets[0],
                       "quantize.imatrix.entries_count": len(im.sums), "quantize.imatrix.chunks_count": im.chunk_count}
    return out


def expected_header(config) -> dict:
    """GGUF header values the converter must write for this HF config."""
    return {"llama.block_count": config.num_hidden_layers, "llama.embedding_length": config.hidden_size,
            "llama.attention.head_count": config.num_attention_heads,
            "llama.attention.head_count_kv": config.num_key_value_heads}


def export_bytes_needed(params: int, spec: quants.QuantSpec) -> int:
    """F16 copy (2 bytes/weight) + quantized copy (at most 1 byte/weight below 8 bits per weight)."""
    return int((2 + max(1.0, spec.bits / 8)) * params)
