"""Single-stage commands (prune, export, bench, eval) outside a plan."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune import quants, registry
from edgeprune.config.checks import check_layer_count
from edgeprune.config.recipe import Calibration, Export
from edgeprune.data.texts import read_texts
from edgeprune.devices import BenchSpec, get_runner
from edgeprune.errors import ConfigError
from edgeprune.runner import StepStore
from edgeprune.atomic import atomic_copy
from edgeprune.runner.store import store_root
from edgeprune.runner.disk import check_free_space, check_writable_dir
from edgeprune.stages.export import export_gguf
from edgeprune.stages.load import CHECKPOINT_FILES, import_model
from edgeprune.stages.prune_methods import check_prune_out, publish_model, publish_with
from edgeprune.stages.score import score_depth
from edgeprune.stages.stream_policy import check_streamable, decide_stream, weight_bytes
from edgeprune.surgery.layers import remove_layers
from edgeprune.surgery.layers_disk import remove_layers_on_disk
from edgeprune.surgery.record import removed_layers, shape_of
from edgeprune.toolchain.hf import load_model, resolve_model


def _scratch_store() -> StepStore:
    return StepStore(store_root(None))


def prune_command(model: str | None, method: str, n_remove: int, calib: str | None, out: Path,
                  stream: bool | None = None) -> dict:
    """`stream`: None decides from the model size (stages/stream_policy.py). Streamed, neither the
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
    store = _scratch_store()
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


def export_command(model: Path, quant: str, out: Path, imatrix: bool | None = None, calib: Path | None = None) -> dict:
    from edgeprune.toolchain.hf import check_hf_folder

    if not model.is_dir():
        raise ConfigError(f"export takes a HF folder, got {model}", where="--model", fix="give a folder with config.json")
    check_hf_folder(model)
    spec = quants.get(quant, where="--quant")
    quants.usable(quant, where="--quant", imatrix=spec.imatrix_default if imatrix is None else imatrix)
    cal = Export().imatrix_calibration
    if calib is not None:
        read_texts(calib)  # a missing, binary or malformed file fails here, in one line, before any work
        cal = cal.model_copy(update={"path": calib})
    cfg = Export(quant=quant, imatrix=imatrix, imatrix_calibration=cal)
    store = _scratch_store()
    from edgeprune.runner import tree_hash

    gguf, meta = export_gguf(store, model, tree_hash(model), cfg)
    check_writable_dir(out.parent, "--out")
    check_free_space(out.parent, gguf.stat().st_size, "the GGUF")
    atomic_copy(gguf, out)
    return {"out": str(out), **meta}


def bench_command(model: Path, prompt_tokens: int, tokens: int, reps: int, warmup: int, threads: int | None) -> dict:
    gguf = resolve_model(str(model))
    return get_runner("local")(gguf, BenchSpec(prompt_tokens, tokens, reps, warmup, threads))
