"""TRL path: the reference's SFTTrainer / SFTConfig setting, fed the same packed blocks as the
lean loop so their speed compares like for like. SFT only (KD runs in the lean loop)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from edgeprune.config.recovery import Recovery
from edgeprune.data.sft import Blocks
from edgeprune.recovery.lora import lora_config
from edgeprune.recovery.loop import step_limit, validation_ppl


def _dataset(blocks: Blocks):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": blocks.ids.tolist(), "labels": blocks.labels.tolist(),
                              "attention_mask": blocks.mask.tolist()})


def _time_budget_callback(minutes: float):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stops training once the wall-clock budget is spent (checked after each step)."""

        def __init__(self):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.t0 >= minutes * 60:
                control.should_training_stop = True
            return control

    return TimeBudget()


def sft_config(cfg: Recovery, out: Path, n_blocks: int):
    from trl import SFTConfig

    t = cfg.train
    limit = step_limit(cfg, n_blocks)
    return SFTConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        learning_rate=t.lr, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
        lr_scheduler_type="constant_with_warmup", max_steps=limit if limit else 10**9,
        num_train_epochs=t.epochs or 1.0, max_length=cfg.data.max_length, packing=False,
        eval_strategy="steps", eval_steps=t.eval_every, save_strategy="steps", save_steps=t.eval_every,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False, logging_steps=max(1, t.eval_every // 5), report_to=[], seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=False,
        gradient_checkpointing=False,  # the reference enables it to save GPU memory; on CPU it only costs time
    )


def train_trl(model, tok, train: Blocks, val: Blocks, cfg: Recovery, out: Path) -> tuple[object, dict]:
    """Returns (peft-wrapped model holding the best adapter, summary)."""
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    callbacks = [EarlyStoppingCallback(early_stopping_patience=cfg.train.patience)]
    if cfg.train.minutes:
        callbacks.append(_time_budget_callback(cfg.train.minutes))
    trainer = SFTTrainer(model=model, args=sft_config(cfg, out, len(train)), train_dataset=_dataset(train),
                         eval_dataset=_dataset(val), processing_class=tok, peft_config=lora_config(cfg.lora),
                         callbacks=callbacks)
    initial = validation_ppl(trainer.model, val, cfg.train.batch_size)
    t0 = time.perf_counter()
    resume = any((out / "trl").glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - t0
    steps = trainer.state.global_step
    tokens = steps * cfg.train.batch_size * cfg.data.max_length
    best = validation_ppl(trainer.model, val, cfg.train.batch_size)
    history = [{"step": h["step"], "val_ppl": math.exp(h["eval_loss"])}
               for h in trainer.state.log_history if "eval_loss" in h]
    return trainer.model, {"stopped_by": "trl", "steps": steps, "tokens": tokens, "seconds": round(seconds, 1),
                           "train_tokens_per_s": tokens / max(result.metrics.get("train_runtime", seconds), 1e-9),
                           "best_val_ppl": best, "initial_val_ppl": initial, "history": history,
                           "resumed": resume, "processes": trainer.accelerator.num_processes}
