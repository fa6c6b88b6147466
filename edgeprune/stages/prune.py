"""Prune stage: apply a depth decision and save a standard checkpoint."""

from __future__ import annotations

from pathlib import Path

from edgeprune.store import StepStore
from edgeprune.surgery.layers import remove_layers
from edgeprune.toolchain.hf import load_model, save_model


def prune_layers(store: StepStore, hf_dir: Path, hf_hash: str, remove: list[int]) -> tuple[Path, str]:
    if not remove:
        return hf_dir, hf_hash

    def build(out: Path) -> dict:
        model, tok = load_model(hf_dir)
        before = model.config.num_hidden_layers
        remove_layers(model, remove)
        save_model(model, tok, out)
        return {"removed": remove, "layers_before": before, "layers_after": model.config.num_hidden_layers}

    # at most the input's size: the pruned checkpoint is the input minus some layers
    need = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
    res = store.run("prune", {"model": hf_hash, "remove": sorted(remove)}, build, need_bytes=need)
    return res.path, res.path.name  # the step key already hashes its inputs
