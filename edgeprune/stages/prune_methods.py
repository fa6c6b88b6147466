"""`edgeprune prune --method NAME`: route a method name to its kind (depth, width, sparsity).

Depth has its own stage (stages/prune_depth.py); width and sparsity load the model, calibrate,
change it in place and publish a plain HF checkpoint atomically (temp dir + rename), with a
record of what was removed (surgery/record.py). Width with activation importance can instead
stream (stages/prune_width.py): --stream, or auto when the weights are large (streaming/policy.py).

`--out` is checked before any work: an existing file, or a non-empty folder that is not an
earlier edgeprune output, is refused; only a folder holding edgeprune's record is replaced.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
import time
from pathlib import Path

from edgeprune import registry
from edgeprune.config.recipe import Calibration
from edgeprune.errors import ConfigError
from edgeprune.methods.sparsity import check_sparsity, parse_nm
from edgeprune.store.disk import check_free_space, check_writable_dir
from edgeprune.stages.calib import calibration_windows
from edgeprune.streaming.policy import (check_width_streamable, decide_width_stream, streamable_width_methods,
                                        weight_bytes)
from edgeprune.surgery.record import RECORD, read_record, removed_width, shape_of, write_record
from edgeprune.toolchain.hf import load_model, resolve_model, save_model

PRUNE_KINDS = ("depth", "width", "sparsity")


def method_kind(name: str, where: str = "--method") -> str:
    """The kind that registers `name`; a typo answers with the closest name of any kind."""
    for kind in PRUNE_KINDS:
        if name in registry.names(kind):
            return kind
    every = [n for kind in PRUNE_KINDS for n in registry.names(kind)]
    close = difflib.get_close_matches(name, every, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(sorted(every))}"
    raise ConfigError(f"unknown pruning method '{name}'", where=where, fix=hint)


def check_prune_out(out: Path) -> None:
    """Before any work: `out` must be absent, an empty folder, or an earlier edgeprune output."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is an existing file; prune writes a folder (a HF checkpoint)", where="--out",
                          fix="give a new folder name")
    if out.is_dir() and any(out.iterdir()) and read_record(out) is None:
        raise ConfigError(f"{out} is a folder with files that edgeprune did not write (no {RECORD}); it is "
                          "never emptied", where="--out", fix="give a new or empty folder")
    check_writable_dir(out.parent, "--out")


def publish_model(model, tok, out: Path, record: dict | None = None) -> None:
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    check_free_space(out.parent, need, "the pruned checkpoint")
    publish_with(out, lambda tmp: save_model(model, tok, tmp), record)


def publish_with(out: Path, write, record: dict | None = None) -> None:
    """`write(tmp_dir)` fills a temp dir next to `out`, which is then renamed into place, with
    `record` (surgery/record.write_record's keywords) written beside the checkpoint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".prune-"))
    try:
        _umask_mode(tmp)
        write(tmp)
        if record is not None:
            write_record(tmp, **record)
        check_prune_out(out)  # again: the folder may have gained files while we scored
        if out.exists():
            shutil.rmtree(out)  # empty, or an earlier edgeprune output (check_prune_out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask_mode(folder: Path) -> None:
    """mkdtemp makes 0700; the published folder gets the mode any new folder would (0755 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)


def _check_options(kind: str, n_remove, sparsity, nm, fraction) -> None:
    given = {"--remove": n_remove, "--sparsity": sparsity, "--nm": nm, "--fraction": fraction}
    wanted = {"depth": {"--remove"}, "width": {"--fraction"}, "sparsity": {"--sparsity", "--nm"}}[kind]
    extra = [k for k, v in given.items() if v is not None and k not in wanted]
    if extra:
        raise ConfigError(f"{', '.join(extra)} does not apply to {kind} methods", where="edgeprune prune",
                          fix=f"{kind} methods take {' / '.join(sorted(wanted))}")
    if kind == "depth" and n_remove is None:
        raise ConfigError("depth methods need --remove K", where="--remove", fix="e.g. --remove 4")
    if kind == "width" and not (fraction is not None and 0 < fraction < 1):
        raise ConfigError(f"width methods need --fraction in (0, 1), got {fraction}", where="--fraction",
                          fix="e.g. --fraction 0.2")
    if kind == "sparsity" and (sparsity is None) == (nm is None):
        raise ConfigError("sparsity methods need exactly one of --sparsity S or --nm N:M", where="--sparsity",
                          fix="e.g. --sparsity 0.5 or --nm 2:4")


def prune_by_name(model: str | None, method: str, calib: str | None, out: Path, n_remove: int | None = None,
                  sparsity: float | None = None, nm: str | None = None, fraction: float | None = None,
                  head_mode: str = "groups", importance: str | None = None, stream: bool | None = None) -> dict:
    kind = method_kind(method)
    _check_options(kind, n_remove, sparsity, nm, fraction)
    check_prune_out(out)
    if kind == "depth":
        from edgeprune.stages.prune_depth import prune_depth

        return prune_depth(model, method, n_remove, calib, out, stream)
    _check_stream(kind, method, importance, stream)
    nm_t = parse_nm(nm) if nm else None
    if sparsity is not None:
        check_sparsity(sparsity)
    source = resolve_model(model)
    scoring = None
    if kind == "width":
        spec = registry.get("width", method)
        scoring = decide_width_stream(stream, spec, importance, weight_bytes(source))
        if scoring.stream:
            from edgeprune.stages.prune_width import prune_width_streamed

            return prune_width_streamed(source, spec, fraction, head_mode, importance, calib, out, scoring)
    model_obj, tok = load_model(source)
    check_free_space(out.parent, sum(p.numel() * p.element_size() for p in model_obj.parameters()),
                     "the pruned checkpoint")
    shape = shape_of(model_obj.config)
    windows = calibration_windows(tok, Calibration(path=calib))
    start = time.perf_counter()
    if kind == "width":
        from edgeprune.stages.width import prune_width

        info = prune_width(model_obj, windows, method, fraction, head_mode, importance)
        removed = removed_width(shape, info.pop("decision"))
        options = {"fraction": fraction, "head_mode": head_mode, "importance": info["importance"]}
    else:
        from edgeprune.stages.sparsify import sparsify

        info = {"method": method, "target": nm or sparsity, **sparsify(model_obj, windows, method, sparsity or 0.0, nm_t)}
        removed, options = {}, {"sparsity": sparsity, "nm": nm}  # weights zeroed, no structure removed
    info["prune_s"] = round(time.perf_counter() - start, 2)
    publish_model(model_obj, tok, out, dict(kind=kind, method=method, source=str(source), shape=shape,
                                            removed=removed, options=options))
    extra = {"scoring": scoring.line()} if scoring else {}
    return {**info, "calibration_windows": list(windows.shape), "out": str(out), **extra}


def _check_stream(kind: str, method: str, importance: str | None, stream: bool | None) -> None:
    """Before any work: --stream with a method that cannot stream is refused, not run in memory
    (the user asked for bounded memory). Width methods stream with activation importance."""
    if not stream:
        return
    if kind == "width":
        check_width_streamable(registry.get("width", method), importance)
        return
    width = ", ".join(streamable_width_methods())
    raise ConfigError(f"{method} cannot stream: {kind} methods change every layer of the loaded model",
                      where="--stream", fix=f"drop --stream (streaming applies to depth methods block-influence, "
                                            f"angular, attention-norm and width methods {width})")
