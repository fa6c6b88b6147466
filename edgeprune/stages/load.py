"""Import stage: any supported model input -> a plain HF checkpoint in the step store."""

from __future__ import annotations

from pathlib import Path

from edgeprune.runner import StepStore, tree_hash
from edgeprune.toolchain.hf import load_model, save_model


def import_model(store: StepStore, model_path: Path) -> tuple[Path, str]:
    """Returns (hf_dir, content hash of the input)."""
    digest = tree_hash(model_path)
    if model_path.is_dir():
        return model_path, digest

    def build(out: Path) -> dict:
        model, tok = load_model(model_path)
        save_model(model, tok, out)
        return {"source": str(model_path), "num_layers": model.config.num_hidden_layers}

    res = store.run("import", {"input": digest}, build)
    return res.path, digest
