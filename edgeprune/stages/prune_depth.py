"""Depth pruning to a folder outside a plan (`edgeprune prune --method <depth method>`, and the heal
step's own pruning): import, score, remove the lowest-scored layers, publish the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune import registry
from edgeprune.config.checks import check_layer_count
from edgeprune.config.recipe import Calibration
from edgeprune.errors import ConfigError
from edgeprune.stages.load import CHECKPOINT_FILES, import_model
from edgeprune.stages.prune_methods import check_prune_out, publish_model, publish_with
from edgeprune.stages.score import score_depth
from edgeprune.store import StepStore
from edgeprune.store.disk import check_free_space
from edgeprune.store.step_store import store_root
from edgeprune.streaming.policy import check_streamable, decide_stream, weight_bytes
from edgeprune.surgery.layers import remove_layers
from edgeprune.surgery.layers_disk import remove_layers_on_disk
from edgeprune.surgery.record import removed_layers, shape_of
from edgeprune.toolchain.hf import load_model, resolve_model


def scratch_store() -> StepStore:
    return StepStore(store_root(None))


def prune_depth(model: str | None, method: str, n_remove: int, calib: str | None, out: Path,
                  stream: bool | None = None) -> dict:
    """`stream`: None decides from the model size (streaming/policy.py). Streamed, neither the
    scoring nor the surgery loads the model: layers are dropped from the safetensors on disk."""
    registry.get("depth", method)
    if n_remove < 1:
        raise ConfigError(f"--remove must be >= 1, got {n_remove}", where="--remove", fix="give a positive count")
    if stream:
        check_streamable(method)
    model_path = resolve_model(model)
    n_layers = _num_layers(model_path)  # ppl-greedy searches half the depth unless asked for more
    check_layer_count(n_layers, n_remove)
    check_prune_out(out)
    store = scratch_store()
    hf_dir, digest = import_model(store, model_path)
    weights = weight_bytes(hf_dir)
    check_free_space(out.parent, weights, "the pruned checkpoint")  # before scoring; an upper bound
    decision = decide_stream(stream, method, weights)
    stats, res = score_depth(store, hf_dir, digest, method, Calibration(path=calib),
                             max_remove=n_remove if n_remove > n_layers // 2 else None, stream=decision.stream)
    remove = registry.get("depth", method).select(stats, n_remove)
    record = dict(kind="depth", method=method, source=str(model_path), shape=_shape(hf_dir),
                  removed=removed_layers(remove), options={"remove": n_remove})
    if decision.stream:
        publish_with(out, lambda tmp: remove_layers_on_disk(hf_dir, tmp, remove, CHECKPOINT_FILES), record)
    else:
        model_obj, tok = load_model(hf_dir)
        remove_layers(model_obj, remove)
        publish_model(model_obj, tok, out, record)
    return {"removed": remove, "layers": n_layers - len(set(remove)), "scores": res.meta["layer_scores"],
            "scoring": decision.line(), "out": str(out)}


def _shape(hf_dir: Path) -> dict:
    from transformers import AutoConfig

    return shape_of(AutoConfig.from_pretrained(hf_dir))


def _num_layers(model_path: Path) -> int:
    if model_path.is_dir():
        return json.loads((model_path / "config.json").read_text())["num_hidden_layers"]
    from edgeprune.toolchain.llamacpp import gguf_metadata

    return gguf_metadata(model_path)["llama.block_count"]
