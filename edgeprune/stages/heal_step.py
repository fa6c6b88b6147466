"""The heal stage: a pruned checkpoint in, a healed standard checkpoint out, cached in the step store.

`auto` heals with each candidate method and keeps the one with the lowest next-token loss on
held-out calibration windows (windows after the fitting ones in the same shuffled stream, never
fitted on); if no method beats the unhealed model there, the model is kept as it was. The
decision and every trial's loss are in the step's meta and `heal.json`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch

from edgeprune import registry
from edgeprune.config.recipe import Heal
from edgeprune.evaluation.hf_nll import windows_nll
from edgeprune.store import StepStore
from edgeprune.stages.calib import calibration_windows
from edgeprune.methods.heal import HealMethod
from edgeprune.stages.heal import cut_layers, heal_model, needed_states, plan_refits, same_prefix, teacher_states
from edgeprune.recovery.teacher import LazyTopK
from edgeprune.stages.heal_global import global_distill
from edgeprune.stages.heal_local import bf16_ok, local_distill
from edgeprune.toolchain.hf import load_model, save_model

# The order matters only for ties; bench/README (Healing) has what each gives on SmolLM2.
# down-span replaced down-all: better on every block tried at 256 fitting windows, and down-all's
# states for every layer after the first cut do not fit in RAM at that size.
AUTO_CANDIDATES = ("down-span", "down-cut", "replaceme-relative")


def check_heal_method(name: str) -> None:
    if name != "auto":
        registry.get("heal", name)


@torch.no_grad()
def holdout_nll(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    total, count = windows_nll(model, windows, batch_size)
    return total / count


def candidates(cfg: Heal) -> list[HealMethod]:
    return [registry.get("heal", n) for n in (AUTO_CANDIDATES if cfg.method == "auto" else (cfg.method,))]


def fit_samples(cfg: Heal, methods: list[HealMethod]) -> int:
    """The recipe's fitting windows, raised to the most any candidate needs (all fit on one set, so
    that one held-out set after it compares them)."""
    return max([cfg.calibration.samples] + [m.samples for m in methods])


def split_windows(tok, cfg: Heal, samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fitting, held-out, extra) windows from one calibration stream, in that order: the stream is
    prefix-stable, so asking for extra windows (global distillation) leaves the first two unchanged.
    `samples`: fitting windows (default: the recipe's). With `global_text`, the extra windows come
    from that text, and its next `holdout_samples` windows are appended to the held-out ones."""
    calib = cfg.calibration
    samples = samples or calib.samples
    extra = cfg.global_samples if cfg.global_minutes > 0 else 0
    own = extra if cfg.global_text is None else 0
    every = calibration_windows(tok, calib.model_copy(update={"samples": samples + cfg.holdout_samples + own}))
    both = every[:samples + cfg.holdout_samples]
    fit = min(samples, len(both) - 1) if len(both) > 1 else len(both)
    holdout, more = both[fit:] if len(both) > fit else both[-1:], every[len(both):]
    if cfg.global_text is not None and extra:
        more, other_holdout = global_windows(tok, cfg, extra)
        holdout = torch.cat([holdout, other_holdout])
    return both[:fit], holdout, more


def global_windows(tok, cfg: Heal, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `extra` training windows of `global_text`, and the `holdout_samples` held-out ones after them."""
    from edgeprune.errors import DataError

    calib = cfg.calibration.model_copy(update={"path": cfg.global_text, "samples": extra + cfg.holdout_samples})
    other = calibration_windows(tok, calib)
    if len(other) <= cfg.holdout_samples:
        raise DataError(f"the global distillation text gives {len(other)} windows of {calib.seq_len} tokens, "
                        f"no more than the {cfg.holdout_samples} it holds out", where=str(cfg.global_text),
                        fix="give a longer text, or fewer heal.holdout_samples")
    cut = min(extra, len(other) - cfg.holdout_samples)
    return other[:cut], other[cut:]


def width_cut(teacher_cfg, student_cfg) -> frozenset[str]:
    """What a width step cut in every layer: fewer query heads (o_proj narrower) or FFN channels."""
    cut = set()
    if student_cfg.num_attention_heads < teacher_cfg.num_attention_heads:
        cut.add("heads")
    if student_cfg.intermediate_size < teacher_cfg.intermediate_size:
        cut.add("ffn")
    return frozenset(cut)


def heal_checkpoint(teacher_dir: Path, student_dir: Path, removed: list[int], cfg: Heal, out: Path) -> dict:
    teacher, tok = load_model(teacher_dir)
    student, _ = load_model(student_dir)
    width = width_cut(teacher.config, student.config)
    teacher.float().eval()
    student.float().eval()
    methods = candidates(cfg)
    fit, holdout, extra = split_windows(tok, cfg, fit_samples(cfg, methods))
    t0 = time.perf_counter()
    n_teacher = teacher.config.num_hidden_layers
    keep = needed_states([plan_refits(m, n_teacher, removed, width) for m in methods], n_teacher, removed)
    t_states = time.perf_counter()
    states = teacher_states(teacher, fit, keep=keep)
    t_states = time.perf_counter() - t_states
    losses = {"teacher": holdout_nll(teacher, holdout), "none": holdout_nll(student, holdout)}
    kd_windows = torch.cat([fit, extra]) if cfg.global_minutes > 0 else None
    # The teacher stays for the global step, which asks for its top-K a micro-batch at a time; the
    # fitting windows lead kd_windows, and their last-layer states are known: only norm and head run
    topk = None
    if kd_windows is not None:  # one tensor, and the fit reads views of it: no second copy in RAM
        final = torch.cat(states.h[-1])
        states.h[-1] = list(final.split([len(t) for t in states.h[-1]]))
        topk = LazyTopK(teacher, kd_windows, cfg.topk, bf16_ok(), cfg.topk_tail, final=final)
    same = same_prefix(teacher, student)
    del teacher
    chosen, model, info, trials = choose_fit(student, methods, states, fit, holdout, removed, width, losses, same)
    local = None
    if cfg.local_minutes > 0 and removed:
        model, local = _kept_if_better("local", model, lambda m: local_distill(
            m, states, fit, removed, cfg.local_minutes, lr=cfg.local_lr), holdout, losses)
    # width cuts touch every layer: from 0
    first = min(cut_layers(states.n_layers, removed), default=0) if cfg.global_layers == "cut" else 0
    del states
    glob = None
    if topk is not None:
        model, glob = _kept_if_better("global", model, lambda m: global_distill(
            m, kd_windows, topk, first, cfg.global_minutes, lr=cfg.global_lr, compile=cfg.global_compile),
            holdout, losses)
        glob |= {"windows": len(kd_windows),
                 "text": str(cfg.global_text) if cfg.global_text else "calibration stream"}
    save_model(model, tok, out)
    record = {"method": cfg.method, "chosen": chosen, "removed": sorted(removed), "width": sorted(width),
              "holdout_nll": losses, "holdout_ppl": {k: math.exp(v) for k, v in losses.items()},
              "trials": trials, "refits": info["refits"] if info else [],
              "fit_first_layer": info["first_layer_run"] if info else None, "local": local, "global": glob,
              "fit_tokens": int(fit.numel()), "holdout_tokens": int(holdout.numel()),
              "teacher_states_s": round(t_states, 1),
              "seconds": round(time.perf_counter() - t0, 1)}
    (out / "heal.json").write_text(json.dumps(record, indent=1))
    return {k: v for k, v in record.items() if k != "refits"}


def choose_fit(student, methods: list[HealMethod], states, fit: torch.Tensor, holdout: torch.Tensor,
               removed: list[int], width: frozenset[str], losses: dict,
               same: int = 0) -> tuple[str, object, dict | None, list]:
    """Heal a copy of `student` with each method; the one with the lowest held-out loss, or "none"
    and `student` itself if none beats losses["none"]. Every trial runs on its own copy: a trial that
    loses must leave nothing behind in the model that is published. `same`: leading layers equal to
    the teacher's (heal_model's teacher_prefix)."""
    best, trials = ("none", student, None), []
    for method in methods:
        model = copy.deepcopy(student)
        t0 = time.perf_counter()
        info = heal_model(model, states, fit, removed, method, width=width, teacher_prefix=same)
        fit_s = time.perf_counter() - t0
        losses[method.name] = holdout_nll(model, holdout)
        trials.append({"method": method.name, "holdout_nll": losses[method.name], "fit_s": round(fit_s, 1),
                       "final_error": info["final_error"], "refits": len(info["refits"]),
                       "first_layer_run": info["first_layer_run"]})
        if losses[method.name] < losses[best[0]]:
            best = (method.name, model, info)
        del model
    chosen, model, info = best
    return chosen, model, info, trials


def _kept_if_better(name: str, model, train, holdout, losses: dict):
    """Train `model` in place with `train(model) -> info`; keep the result only if its held-out loss is
    below every earlier stage's (the unhealed model, the closed-form fits, an earlier training step),
    else return the model as it was before."""
    before = copy.deepcopy(model)
    info = train(model)
    losses[name] = holdout_nll(model, holdout)
    info["kept"] = losses[name] < min(v for k, v in losses.items() if k not in ("teacher", name))
    return (model if info["kept"] else before), info


def heal_step(store: StepStore, teacher_dir: Path, teacher_hash: str, student_dir: Path, student_key: str,
              removed: list[int], cfg: Heal) -> tuple[Path, str, dict]:
    """Cached heal of `student_dir` (the teacher minus `removed` layers, maybe narrower) against
    the unpruned `teacher_dir`. Returns (healed dir, its key, the heal record)."""
    check_heal_method(cfg.method)
    key = {"model": student_key, "teacher": teacher_hash, "removed": sorted(removed), "heal": cfg.model_dump(mode="json")}
    res = store.run("heal", key, lambda out: heal_checkpoint(teacher_dir, student_dir, removed, cfg, out))
    return res.path, res.path.name, res.meta


def check_global_options(minutes: tuple[float, float], text: str | None, windows: int | None) -> None:
    """--heal-text / --heal-windows shape the global step: without its minutes they would do nothing."""
    from edgeprune.data.texts import read_texts
    from edgeprune.errors import ConfigError

    for flag, given in (("--heal-text", text), ("--heal-windows", windows)):
        if given and not minutes[1] > 0:
            raise ConfigError(f"{flag} shapes the global distillation, and --heal-minutes gives it no time",
                              where=flag, fix=f"add --heal-minutes LOCAL GLOBAL with GLOBAL > 0, or drop {flag}")
    if text:
        read_texts(Path(text))  # a missing, empty or malformed file fails here, before anything is pruned


def prune_then_heal(model: str | None, method: str, calib: str | None, out: Path, heal: str,
                    minutes: tuple[float, float] = (0.0, 0.0), global_text: Path | None = None,
                    global_samples: int | None = None, **prune_kw) -> dict:
    """`edgeprune prune ... --heal METHOD`: prune into a temp folder beside `out`, heal against the
    unpruned model, then publish `out` in one rename (with the prune record, now naming the heal)."""
    import shutil
    import tempfile

    from edgeprune.config.recipe import Calibration
    from edgeprune.errors import ConfigError
    from edgeprune.store.step_store import store_root
    from edgeprune.stages.load import import_model
    from edgeprune.stages.prune_methods import check_prune_out, method_kind, prune_by_name, publish_with
    from edgeprune.surgery.record import RECORD
    from edgeprune.toolchain.hf import resolve_model

    check_heal_method(heal)
    if method_kind(method) == "sparsity":
        raise ConfigError(f"--heal refits dense projections, which would fill in {method}'s zeros", where="--heal",
                          fix="drop --heal for sparsity methods")
    check_prune_out(out)
    cfg = Heal(method=heal, calibration=Heal().calibration.model_copy(update={"path": calib}),
               local_minutes=minutes[0], global_minutes=minutes[1], global_text=global_text,
               **({"global_samples": global_samples} if global_samples is not None else {}))
    teacher_dir, _ = import_model(StepStore(store_root(None)), resolve_model(model))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".heal-") as tmp:
        pruned = Path(tmp) / "pruned"
        info = prune_by_name(model, method, calib, pruned, **prune_kw)
        removed = info.get("removed", []) if method_kind(method) == "depth" else []

        def write(dst: Path) -> None:
            info["heal"] = heal_checkpoint(teacher_dir, pruned, removed, cfg, dst)
            record = json.loads((pruned / RECORD).read_text()) if (pruned / RECORD).is_file() else {}
            (dst / RECORD).write_text(json.dumps({**record, "heal": info["heal"]}, indent=1))

        publish_with(out, write)
    info["out"] = str(out)
    return info
