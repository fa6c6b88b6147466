"""Recover stage: LoRA SFT and/or distillation on a pruned HF checkpoint, merged back into a
plain HF checkpoint that the export stage turns into a GGUF.

Output folder: the merged checkpoint at the top (config.json + safetensors), `adapter/`
(PEFT format, loadable with PeftModel.from_pretrained on the pruned input), `recovery.json`
(budget, throughput, validation history, memory per process). While training, `checkpoint/`
holds resumable state; it is removed once the merged model is written.

Under `accelerate launch --use_fsdp --fsdp_version 2` the student (and a live teacher) are sharded
over the processes (recovery/fsdp.py); the merged checkpoint is the same plain HF folder.
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import time
from pathlib import Path

import torch

from edgeprune.config.loader import validate_dict
from edgeprune.config.recovery import Recovery
from edgeprune.errors import ConfigError
from edgeprune.store import StepStore, tree_hash
from edgeprune.store.step_store import key_hash
from edgeprune.toolchain.hf import load_model, resolve_model

BUDGET_KEYS = ("steps", "minutes", "epochs", "eval_every", "checkpoint_every", "patience", "threads")


def load_recovery(recipe: str | None, overrides: dict) -> Recovery:
    """The `recovery:` section of a recipe (name or path), with CLI overrides on top."""
    from edgeprune.config.loader import load_recipe, recipe_path

    base: dict = {}
    source = "command line"
    if recipe:
        r, source = load_recipe(recipe), str(recipe_path(recipe))
        base = r.recovery.model_dump(mode="json", exclude_unset=True) if r.recovery else {}
    cfg = validate_dict(base, Recovery, source, {k: v for k, v in overrides.items() if v is not None})
    check_budget(cfg, source)
    return cfg


def check_budget(cfg: Recovery, where: str) -> None:
    t = cfg.train
    if t.steps is None and t.minutes is None and t.epochs is None:
        raise ConfigError("training has no budget", where=where,
                          fix="pass --steps N or --minutes M, or set recovery.train.epochs in the recipe")


def fingerprint(student_hash: str, cfg: Recovery, teacher: str | None) -> str:
    """What a checkpoint must match to be resumed; the budget may change between runs."""
    dump = cfg.model_dump(mode="json")
    dump["train"] = {k: v for k, v in dump["train"].items() if k not in BUDGET_KEYS}
    return key_hash({"student": student_hash, "teacher": teacher, "recovery": dump})


def _teacher(cfg: Recovery, teacher_path: Path | None, student, train, out: Path, device, sharding=None):
    from edgeprune.recovery.teacher import CachedTeacher, LiveTeacher, build_topk_cache, check_vocab

    if cfg.mode == "sft":
        return None, train
    if teacher_path is None:
        raise ConfigError(f"mode '{cfg.mode}' needs a teacher", where="--teacher",
                          fix="give the unpruned model (HF folder or .gguf)")
    model, _ = load_model(resolve_model(str(teacher_path)), cfg.train.base_dtype)
    check_vocab(student, model, str(teacher_path))
    k = cfg.distill.topk_cache
    if k is None:
        live = LiveTeacher(model, device)
        if sharding is not None:  # under FSDP the teacher is sharded like the student: forward only
            sharding.apply(live.model, train=False)
        return live, train
    n = min(len(train), (cfg.train.steps or 10**9) * cfg.train.batch_size, cfg.distill.cache_blocks)
    train = train.take(slice(0, n))  # a cached run trains on the cached blocks only
    cached: CachedTeacher = build_topk_cache(model.to(device), train, k, out / f"teacher-top{k}.pt")
    del model  # the point of the cache: the teacher leaves memory before training starts
    return cached, train


def run_recovery(student_dir: Path, cfg: Recovery, out: Path, teacher_path: Path | None = None,
                 fresh: bool = False, on_step=None) -> dict:
    from accelerate import Accelerator

    from edgeprune.data.sft import build_blocks
    from edgeprune.recovery import checkpoint, fsdp
    from edgeprune.recovery.lora import merge_and_save, wrap_lora
    from edgeprune.recovery.memory import Tracker

    check_budget(cfg, "recovery.train")
    fsdp.check_launch(cfg.train.trainer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    sharding = fsdp.Sharding.from_launch(acc)
    model, tok = load_model(student_dir, cfg.train.base_dtype)
    train, val = build_blocks(cfg.data, tok, cfg.seed)
    teacher, train = _teacher(cfg, teacher_path, model, train, out, acc.device, sharding)
    fp = fingerprint(tree_hash(student_dir), cfg, str(teacher_path) if teacher_path else None)
    if fresh and acc.is_main_process:
        checkpoint.discard(out)
    if cfg.train.trainer == "trl":
        from edgeprune.recovery.trl_path import train_trl

        memory = Tracker(model)
        peft_model, summary = train_trl(model, tok, train, val, cfg, out)
        summary.update(memory.gathered(acc))
    else:
        from edgeprune.recovery.loop import Loop

        loop = Loop(wrap_lora(model, cfg.lora), train, val, cfg, out, teacher, acc, fp, on_step, sharding)
        loop.resume()
        memory = Tracker(loop.inner)  # after sharding: parameters held, and the peak from here on
        summary = loop.run()
        summary.update(memory.gathered(acc))  # the training's numbers, before any merge
        if loop.sharded:
            adapter = loop.best["adapter"]  # whole tensors, gathered by every process
            del loop, model, teacher  # the shards go before the main process loads the whole model
            gc.collect()
            peft_model = _unsharded(student_dir, cfg, adapter) if acc.is_main_process else None
        else:
            peft_model = loop.inner
    summary.update({"mode": cfg.mode, "trainer": cfg.train.trainer, "train_blocks": len(train),
                    "val_blocks": len(val), "block_tokens": cfg.data.max_length, "data": cfg.data.source,
                    "student": str(student_dir), "teacher": str(teacher_path) if teacher_path else None,
                    "recipe": cfg.model_dump(mode="json")})
    if acc.is_main_process:
        merge_and_save(peft_model, tok, out, out / "adapter")
        (out / "recovery.json").write_text(json.dumps(summary, indent=2, default=str))
        checkpoint.discard(out)
        shutil.rmtree(out / "trl", ignore_errors=True)
    acc.wait_for_everyone()
    return summary


def _unsharded(student_dir: Path, cfg: Recovery, adapter: dict):
    """The student with the trained adapter in one process, to merge: the frozen base never changed,
    so it is read again from disk and only the adapter comes from training."""
    from edgeprune.recovery.lora import load_trainable, wrap_lora

    model, _ = load_model(student_dir, cfg.train.base_dtype)
    peft_model = wrap_lora(model, cfg.lora)
    load_trainable(peft_model, adapter)
    return peft_model


RECORD_KEYS = ("mode", "data", "steps", "tokens", "seconds", "stopped_by", "best_step", "initial_val_ppl",
               "best_val_ppl", "train_tokens_per_s", "train_blocks", "val_blocks", "block_tokens", "teacher")


def recovery_record(summary: dict, cfg: Recovery, stage_seconds: float) -> dict:
    """What the manifest and the card say about a recovery: data, budget, what it used, val ppl before/after.

    `seconds` is the training loop (validation included; what `train.minutes` bounds); `stage_seconds`
    adds loading student and teacher, building the data and merging the adapter."""
    t = cfg.train
    return {k: summary.get(k) for k in RECORD_KEYS} | {
        "budget": {"minutes": t.minutes, "steps": t.steps, "epochs": t.epochs},
        "lora_rank": cfg.lora.rank, "lr": t.lr, "trainer": t.trainer, "stage_seconds": round(stage_seconds, 1)}


def recover_stage(store: StepStore, hf_dir: Path, hf_hash: str, cfg: Recovery,
                  teacher_dir: Path | None = None) -> tuple[Path, str, dict]:
    """Planner hook between prune and export: (pruned hf_dir, hash) -> (recovered hf_dir, hash, record).

    `teacher_dir` is the unpruned checkpoint for KD modes (cfg.teacher wins when set). Training
    checkpoints live in a work dir named by the step key, so a killed plan resumes training.
    The record (recovery_record) is the step's cached meta, so a rerun reports the same numbers.
    The returned hash is the content hash of the recovered checkpoint (see below).
    """
    check_budget(cfg, "recipe recovery.train")
    teacher = Path(cfg.teacher) if cfg.teacher else teacher_dir
    key = {"model": hf_hash, "teacher": tree_hash(teacher) if teacher and cfg.mode != "sft" else None,
           "recovery": cfg.model_dump(mode="json")}
    work = store.root / f".work-recover-{key_hash({'step': 'recover', **key})[:16]}"

    def build(tmp: Path) -> dict:
        t0 = time.perf_counter()
        summary = run_recovery(hf_dir, cfg, work, teacher)
        for item in work.iterdir():
            shutil.move(str(item), tmp / item.name)
        shutil.rmtree(work, ignore_errors=True)
        return recovery_record(summary, cfg, time.perf_counter() - t0) | {"output_sha256": tree_hash(tmp)}

    res = store.run("recover", key, build)
    # Downstream steps are keyed by the recovered weights, not by this step's name: a minutes budget
    # makes training non-deterministic, so a rebuilt step (evicted, --from recover) is a new model.
    out_key = f"recover-{res.meta['output_sha256'][:16]}" if "output_sha256" in res.meta else res.path.name
    return res.path, out_key, res.meta | {"cache_hit": res.hit}


def recover_command(model: Path, teacher: str | None, data: str | None, mode: str | None, minutes: float | None,
                    steps: int | None, trainer: str | None, recipe: str | None, fresh: bool, out: Path) -> dict:
    from edgeprune.toolchain.hf import check_hf_folder

    if not Path(model).is_dir():
        raise ConfigError(f"recover takes a HF folder, got {model}", where="--model",
                          fix="prune first (edgeprune prune ... --out DIR) and pass DIR")
    check_hf_folder(Path(model))
    over = {"data.source": data, "mode": mode, "train.minutes": minutes, "train.steps": steps,
            "train.trainer": trainer, "teacher": teacher}
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}", where="--steps", fix="give a positive count")
    if minutes is not None and minutes <= 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes}", where="--minutes", fix="give a positive number")
    cfg = load_recovery(recipe, over)
    summary = run_recovery(Path(model), cfg, out, Path(cfg.teacher) if cfg.teacher else None, fresh)
    for bulky in ("history", "losses"):
        summary.pop(bulky, None)
    summary.pop("recipe", None)
    return {**summary, "out": str(out)}
