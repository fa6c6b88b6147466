"""PEFT adapter plumbing: wrap, merge into dense weights, save the adapter alone."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeprune.config.recovery import Lora


def lora_config(cfg: Lora):
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM", bias="none")


def wrap_lora(model, cfg: Lora):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg))


def trainable_state(model) -> dict:
    """Only the adapter tensors: what a checkpoint needs, a few MB instead of the whole model.
    Whole tensors: under FSDP each shard is gathered, so every process must call this."""
    from edgeprune.recovery.fsdp import full

    return {k: full(v.detach()).clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable(model, state: dict) -> None:
    params = dict(model.named_parameters())
    missing = set(state) ^ {k for k, v in params.items() if v.requires_grad}
    if missing:
        raise KeyError(f"adapter state does not match the model: {sorted(missing)[:3]}")
    from edgeprune.recovery.fsdp import local_like

    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(local_like(v, params[k]))  # under FSDP: this process's shard of v


def merge_and_save(peft_model, tok, out: Path, adapter_out: Path | None = None):
    """Save the adapter (PEFT format) first, then fold it into the base weights and save a plain
    HF checkpoint with no PEFT dependency."""
    from edgeprune.toolchain.hf import save_model

    if adapter_out is not None:
        peft_model.save_pretrained(adapter_out)
    dense = peft_model.merge_and_unload()
    dense.eval()
    save_model(dense, tok, out)
    return dense
