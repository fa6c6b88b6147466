"""Import stage: any supported model input -> a plain HF checkpoint in the step store.

Later stages read only this copy, so what they load is confined to the store: the config,
safetensors shards and tokenizer files, never a `*.py` (no remote code) or a pickle. A
pickle-only folder is converted here, and only when the user passed --allow-pickle.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeprune.store import StepStore, tree_hash
from edgeprune.toolchain.hf import load_model, save_model

# Files of a HF checkpoint that carry no code; everything else in the folder stays behind.
CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
                    "merges.txt", "added_tokens.json", "chat_template.jinja")


def import_model(store: StepStore, model_path: Path, allow_pickle: bool = False) -> tuple[Path, str]:
    """Returns (hf_dir in the store, content hash of the input)."""
    digest = tree_hash(model_path)
    if model_path.is_dir() and list(model_path.glob("*.safetensors")):
        def build(out: Path) -> dict:
            copied = copy_checkpoint(model_path, out)
            check_checkpoint(out, model_path)  # a failed build leaves nothing in the store
            return {"source": str(model_path), "files": copied}

        need = sum(f.stat().st_size for f in model_path.glob("*.safetensors"))
    else:
        def build(out: Path) -> dict:
            model, tok = load_model(model_path, allow_pickle=allow_pickle)
            save_model(model, tok, out)
            return {"source": str(model_path), "num_layers": model.config.num_hidden_layers}

        # a GGUF is dequantized to float32: up to ~8x a 4-bit file; pickles are re-saved 1:1
        need = model_path.stat().st_size * 8 if model_path.is_file() else _folder_bytes(model_path)

    res = store.run("import", {"input": digest}, build, need_bytes=need)
    return res.path, digest


def copy_checkpoint(src: Path, dst: Path) -> list[str]:
    """Copy the code-free files by name (symlinks resolved to their content)."""
    names = [n for n in CHECKPOINT_FILES if (src / n).is_file()]
    names += sorted(f.name for f in src.glob("*.safetensors"))
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return names


def check_checkpoint(folder: Path, source: Path) -> None:
    """What a copied checkpoint must be before it is stored: a config transformers reads, and every
    safetensors file whole (its header parses and its tensors cover the file) with every shard the
    index names present. Copied unchecked, a truncated or corrupt file was stored as a good import
    and reused by every later run, each failing only when a stage loaded it."""
    import json

    from safetensors import SafetensorError, safe_open
    from transformers import AutoConfig

    from edgeprune.errors import ModelError

    fix = "re-download or re-save the checkpoint (model.save_pretrained) and run again"
    try:
        AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"config.json is not a transformers config: {str(e).splitlines()[0]}",
                         where=str(source / "config.json"), fix=fix) from None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        missing = sorted(set(json.loads(index.read_text())["weight_map"].values())
                         - {f.name for f in folder.glob("*.safetensors")})
        if missing:
            raise ModelError(f"shard(s) named by model.safetensors.index.json missing: {', '.join(missing)}",
                             where=str(source), fix=fix)
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(f, framework="pt") as st:
                list(st.keys())
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{f.name} is not a whole safetensors file ({str(e).splitlines()[0]})",
                             where=str(source / f.name), fix=fix) from None


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
