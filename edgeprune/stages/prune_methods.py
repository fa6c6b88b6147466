"""`edgeprune prune --method NAME`: route a method name to its kind (depth, width, sparsity).

Depth keeps its own command (stages/commands.py); width and sparsity load the model, calibrate,
change it in place and publish a plain HF checkpoint atomically (temp dir + rename).
"""

from __future__ import annotations

import difflib
import shutil
import tempfile
import time
from pathlib import Path

from edgeprune import registry
from edgeprune.config.recipe import Calibration
from edgeprune.errors import ConfigError
from edgeprune.methods.sparsity import check_sparsity, parse_nm
from edgeprune.stages.calib import calibration_windows
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


def publish_model(model, tok, out: Path) -> None:
    publish_with(out, lambda tmp: save_model(model, tok, tmp))


def publish_with(out: Path, write) -> None:
    """`write(tmp_dir)` fills a temp dir next to `out`, which is then renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".prune-"))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    if kind == "depth":
        from edgeprune.stages.commands import prune_command

        return prune_command(model, method, n_remove, calib, out, stream)
    if stream:  # these hook or back-propagate through the loaded model; only depth scoring streams
        raise ConfigError(f"{method} cannot stream: {kind} methods work on the loaded model", where="--stream",
                          fix="drop --stream (streaming applies to depth methods: block-influence, angular, "
                              "attention-norm)")
    nm_t = parse_nm(nm) if nm else None
    if sparsity is not None:
        check_sparsity(sparsity)
    model_obj, tok = load_model(resolve_model(model))
    windows = calibration_windows(tok, Calibration(path=calib))
    start = time.perf_counter()
    if kind == "width":
        from edgeprune.stages.width import prune_width

        info = prune_width(model_obj, windows, method, fraction, head_mode, importance)
        info.pop("decision")
    else:
        from edgeprune.stages.sparsify import sparsify

        info = {"method": method, "target": nm or sparsity, **sparsify(model_obj, windows, method, sparsity or 0.0, nm_t)}
    info["prune_s"] = round(time.perf_counter() - start, 2)
    publish_model(model_obj, tok, out)
    return {**info, "calibration_windows": list(windows.shape), "out": str(out)}
