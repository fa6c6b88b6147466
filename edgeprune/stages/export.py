"""Export stage: HF -> F16 GGUF (llama.cpp converter) -> quantized GGUF, verified on the way.

Gates (each failure raises ExportError and nothing is published):
  * the F16 GGUF's next-token logits agree with the HF model on a fixed prompt
    (cosine >= `logits_cos_min`, top-1 agreement reported);
  * the quantized GGUF loads in llama.cpp, has the expected block count, and its
    next-token distribution's KL divergence vs the F16 GGUF is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgeprune.config.recipe import Export
from edgeprune.errors import ExportError
from edgeprune.runner import StepStore
from edgeprune.toolchain import llamacpp
from edgeprune.toolchain.hf import load_model

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


def export_gguf(store: StepStore, hf_dir: Path, hf_hash: str, cfg: Export) -> tuple[Path, dict]:
    llamacpp.require_llama_cpp()

    def build(out: Path) -> dict:
        bar = tqdm(total=4, desc=f"export {cfg.quant}", unit="step")
        model, tok = load_model(hf_dir)
        tokens = tok(VERIFY_PROMPT, add_special_tokens=False)["input_ids"]
        ref = hf_logits(model, tokens)
        n_layers = model.config.num_hidden_layers
        del model
        f16 = out / "model.F16.gguf"
        bar.set_postfix_str("convert F16")
        llamacpp.convert_hf_to_gguf(hf_dir, f16, "f16")
        bar.update()
        bar.set_postfix_str("verify F16")
        f16_vs_hf = compare_logits(ref, llamacpp.gguf_logits(f16, tokens))
        if f16_vs_hf["cos_min"] < cfg.logits_cos_min:
            raise ExportError(f"F16 GGUF logits disagree with the HF model (cos {f16_vs_hf['cos_min']:.4f} "
                              f"< {cfg.logits_cos_min})", where=str(hf_dir), fix="report a converter bug")
        bar.update()
        bar.set_postfix_str(f"quantize {cfg.quant}")
        quant = out / f"model.{cfg.quant}.gguf"
        llamacpp.quantize(f16, quant, cfg.quant)
        bar.update()
        bar.set_postfix_str("verify quantized")
        meta = llamacpp.gguf_metadata(quant)
        if meta.get("llama.block_count") != n_layers:
            raise ExportError(f"GGUF has {meta.get('llama.block_count')} blocks, expected {n_layers}",
                              where=str(quant), fix="re-export")
        q_vs_f16 = compare_logits(llamacpp.gguf_logits(f16, tokens), llamacpp.gguf_logits(quant, tokens))
        f16.unlink()  # 2-4x the quantized size; reproducible from the step key
        bar.update()
        bar.close()
        verify = {"prompt_tokens": len(tokens), "hf_vs_f16": f16_vs_hf, "quant_vs_f16": q_vs_f16,
                  "tolerance": {"hf_vs_f16_cos_min": cfg.logits_cos_min}, "gguf": meta}
        (out / "verify.json").write_text(json.dumps(verify, indent=2, default=str))
        return {"gguf": quant.name, "bytes": quant.stat().st_size, "layers": n_layers, "verify": verify}

    res = store.run("export", {"model": hf_hash, "export": cfg.model_dump()}, build)
    return res.path / res.meta["gguf"], res.meta
