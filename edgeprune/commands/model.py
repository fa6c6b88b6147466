"""Single-stage commands (export, bench) outside a plan; `prune` is stages/prune_methods.prune_by_name."""

from __future__ import annotations

from pathlib import Path

from edgeprune import quants
from edgeprune.config.recipe import Export
from edgeprune.data.texts import read_texts
from edgeprune.devices import BenchSpec, get_runner
from edgeprune.errors import ConfigError
from edgeprune.atomic import atomic_copy
from edgeprune.store.disk import check_free_space, check_writable_dir
from edgeprune.stages.export import export_gguf
from edgeprune.stages.prune_depth import scratch_store
from edgeprune.toolchain.hf import resolve_model


def export_command(model: Path, quant: str, out: Path, imatrix: bool | None = None, calib: Path | None = None,
                   kld_max: float | None = None) -> dict:
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
    cfg = Export(quant=quant, imatrix=imatrix, imatrix_calibration=cal, kld_max=kld_max)
    store = scratch_store()
    from edgeprune.store import tree_hash

    gguf, meta = export_gguf(store, model, tree_hash(model), cfg)
    check_writable_dir(out.parent, "--out")
    check_free_space(out.parent, gguf.stat().st_size, "the GGUF")
    atomic_copy(gguf, out)
    return {"out": str(out), **meta}


def bench_command(model: Path, prompt_tokens: int, tokens: int, reps: int, warmup: int, threads: int | None) -> dict:
    gguf = resolve_model(str(model))
    return get_runner("local")(gguf, BenchSpec(prompt_tokens, tokens, reps, warmup, threads))
