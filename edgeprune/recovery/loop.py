"""The lean training loop: LoRA on a CPU without trainer overhead, the same code under
`accelerate launch` (DDP, or FSDP with the base sharded: recovery/fsdp.py; each process takes
its slice of the global batch).

Budget: steps, epochs or minutes (wall clock of the loop, evaluations included; a step is only
started when the mean step and evaluation times so far say it and the evaluation after it still
fit, so a minutes budget is not overrun by a slow last step on a loaded CPU). Validation
perplexity every `eval_every` steps; the best adapter is kept; `patience` evaluations
without improvement stop the run. A checkpoint every `checkpoint_every` steps makes a killed
run resume where it stopped, with the same data order and RNG state.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from edgeprune.config.recovery import Recovery
from edgeprune.data.sft import Blocks
from edgeprune.errors import BudgetError
from edgeprune.methods.distill import IGNORE, lm_loss, mixed_loss
from edgeprune.faults import kill_point
from edgeprune.recovery import checkpoint, fsdp
from edgeprune.recovery.lora import load_trainable, trainable_state


@dataclass
class LoopState:
    step: int = 0
    elapsed: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    evals: int = 0
    tokens: int = 0
    best_ppl: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    last_loss: float = math.nan
    history: list = field(default_factory=list)
    losses: list = field(default_factory=list)  # training loss per step (mean over processes)


def batch_indices(step: int, n: int, batch: int, seed: int) -> torch.Tensor:
    """Block indices of global batch `step`: epoch-wise permutations, so the order is a pure
    function of (step, seed) and a resumed run sees exactly the batches it would have."""
    per_epoch = n // batch
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[pos * batch:(pos + 1) * batch]


def lr_at(step: int, base: float, warmup: int) -> float:
    """Linear warm-up, then constant: a minutes budget has no known end to decay towards."""
    return base * min(1.0, (step + 1) / (warmup + 1)) if warmup else base


def step_limit(cfg: Recovery, n_blocks: int) -> int | None:
    t = cfg.train
    limits = [t.steps] if t.steps else []
    if t.epochs:
        limits.append(math.floor(t.epochs * n_blocks / t.batch_size))
    limit = min(limits) if limits else None
    if limit == 0:
        raise BudgetError(f"the budget allows 0 training steps ({n_blocks} blocks, batch {t.batch_size}, "
                          f"epochs {t.epochs})", where="train", fix="raise train.epochs or set train.steps")
    return limit


@torch.no_grad()
def validation_ppl(model, val: Blocks, batch: int) -> float:
    """exp(mean next-token NLL) over every labelled position of the held-out blocks."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    nll, count = 0.0, 0
    for s in range(0, len(val), batch):
        b = val.take(slice(s, s + batch))
        b = Blocks(b.ids.to(dev), b.labels.to(dev), b.mask.to(dev))
        logits = model(input_ids=b.ids, attention_mask=b.mask).logits
        n = int((b.labels[:, 1:] != IGNORE).sum())
        nll, count = nll + float(lm_loss(logits, b.labels)) * n, count + n
    model.train(was_training)
    return math.exp(nll / max(count, 1))


class Loop:
    def __init__(self, model, train: Blocks, val: Blocks, cfg: Recovery, out: Path, teacher=None,
                 accelerator=None, fingerprint: str = "", on_step: Callable[[int], None] | None = None,
                 sharding: fsdp.Sharding | None = None):
        from accelerate import Accelerator

        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.cfg, self.t, self.train, self.val, self.out = cfg, cfg.train, train, val, Path(out)
        self.teacher, self.fingerprint, self.on_step = teacher, fingerprint, on_step
        world = self.acc.num_processes
        if self.t.batch_size % world:
            raise BudgetError(f"train.batch_size {self.t.batch_size} does not split over {world} processes",
                              where="train.batch_size", fix=f"use a multiple of {world}")
        if len(train) < self.t.batch_size:
            raise BudgetError(f"{len(train)} training blocks, fewer than one batch of {self.t.batch_size}",
                              where="data", fix="give more data or a smaller train.batch_size")
        self.sharded = sharding is not None
        if self.sharded:
            # Shard first: the optimizer must hold the sharded parameters. Not passed to prepare(),
            # which on a CPU would wrap the sharded model in DDP as well.
            self.model = self.inner = sharding.apply(model)
            self.opt = self._adamw(model)
        else:
            self.model, self.opt = self.acc.prepare(model, self._adamw(model))
            self.inner = self.acc.unwrap_model(self.model)
        self.state, self.best = LoopState(), None
        self.limit = step_limit(cfg, len(train))

    def _adamw(self, model) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.t.lr, weight_decay=self.t.weight_decay)

    # -- checkpoints -------------------------------------------------------------------------
    def resume(self) -> bool:
        found = checkpoint.load(self.out, self.fingerprint)
        if found is None:
            return False
        state, self.best = found
        load_trainable(self.inner, state["adapter"])
        self.opt.load_state_dict(fsdp.local_optim_state(self.opt, state["optim"]))
        checkpoint.set_rng_state(state["rng"])
        self.state = LoopState(**state["loop"])
        return True

    def save(self, best_changed: bool) -> None:
        # Under FSDP the adapter and optimizer tensors are shards and gathering them is a collective:
        # every process takes part, the main one writes whole tensors (the file a single process
        # writes, so a checkpoint resumes on any number of processes).
        if self.sharded or self.acc.is_main_process:
            adapter, optim = trainable_state(self.inner), fsdp.full_optim_state(self.opt)
        if self.acc.is_main_process:
            state = {"fingerprint": self.fingerprint, "adapter": adapter,
                     "optim": optim, "rng": checkpoint.rng_state(), "loop": asdict(self.state)}
            checkpoint.save(self.out, state, self.best if best_changed else None)
        self.acc.wait_for_everyone()

    # -- steps -------------------------------------------------------------------------------
    def _local(self, idx: torch.Tensor) -> tuple[Blocks, torch.Tensor]:
        mine = idx.view(self.acc.num_processes, -1)[self.acc.process_index]
        b = self.train.take(mine)
        dev = self.acc.device
        return Blocks(b.ids.to(dev), b.labels.to(dev), b.mask.to(dev)), mine

    def loss(self, b: Blocks, index: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=b.ids, attention_mask=b.mask).logits
        mode, d = self.cfg.mode, self.cfg.distill
        ce = lm_loss(logits, b.labels) if mode != "kd" else None
        kd = None
        if mode != "sft":
            # KD on every real position: the teacher's view of padding-free text, prompts included.
            kd = self.teacher.loss(logits, b.ids, b.mask, index, d.temperature)
        return mixed_loss(ce, kd, d.alpha if mode == "kd+sft" else 1.0)

    def train_step(self) -> float:
        s = self.state
        for g in self.opt.param_groups:
            g["lr"] = lr_at(s.step, self.t.lr, self.t.warmup_steps)
        b, index = self._local(batch_indices(s.step, len(self.train), self.t.batch_size, self.cfg.seed))
        self.model.train()
        loss = self.loss(b, index)
        self.acc.backward(loss)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        s.step += 1
        s.tokens += b.tokens() * self.acc.num_processes
        return float(self.acc.reduce(loss.detach(), "mean"))

    def evaluate(self) -> bool:
        """Validation ppl; returns True when it is a new best (and keeps that adapter)."""
        s = self.state
        t0 = time.perf_counter()
        ppl = validation_ppl(self.inner, self.val, self.t.batch_size)
        s.eval_seconds, s.evals = s.eval_seconds + time.perf_counter() - t0, s.evals + 1
        s.history.append({"step": s.step, "val_ppl": ppl, "train_loss": s.last_loss, "elapsed": s.elapsed})
        if ppl < s.best_ppl:
            s.best_ppl, s.best_step, s.bad_evals = ppl, s.step, 0
            self.best = {"step": s.step, "val_ppl": ppl, "adapter": trainable_state(self.inner)}
            return True
        s.bad_evals += 1
        return False

    # -- the run -----------------------------------------------------------------------------
    def _should_stop(self, now_elapsed: float) -> str | None:
        s, t = self.state, self.t
        reason = None
        if self.limit is not None and s.step >= self.limit:
            reason = "steps"
        elif t.minutes is not None and now_elapsed + self.next_step_cost() > t.minutes * 60:
            reason = "minutes"
        elif s.bad_evals >= t.patience:
            reason = "early-stop"
        # Every process must stop on the same step, or DDP would hang in the next all-reduce.
        flag = self.acc.reduce(torch.tensor(0.0 if reason is None else 1.0, device=self.acc.device), "sum")
        return reason or ("peer" if float(flag) > 0 else None)

    def next_step_cost(self) -> float:
        """Expected seconds of one more step and the evaluation that follows it (periodic or final),
        from the means so far; 0 before the first step (nothing to go on)."""
        s = self.state
        if s.step == 0:
            return 0.0
        per_eval = s.eval_seconds / s.evals if s.evals else 0.0
        return (s.elapsed - s.eval_seconds) / s.step + per_eval  # steps incl. checkpoint saves, then an eval

    def _bar(self):
        t = self.t
        total = self.limit if self.limit is not None else int(t.minutes * 60)
        unit = "step" if self.limit is not None else "s"
        return tqdm(total=total, initial=self.state.step if unit == "step" else int(self.state.elapsed),
                    unit=unit, desc=f"recover {self.cfg.mode}", disable=not self.acc.is_main_process)

    def run(self) -> dict:
        s = self.state
        resumed = s.step > 0
        bar, t0, base = self._bar(), time.perf_counter(), s.elapsed
        if not resumed:
            self.evaluate()
            self.save(True)
        while (reason := self._should_stop(base + time.perf_counter() - t0)) is None:
            t_step = time.perf_counter()
            s.last_loss = self.train_step()
            s.losses.append(s.last_loss)
            s.train_seconds += time.perf_counter() - t_step
            s.elapsed = base + time.perf_counter() - t0
            best_changed = self.evaluate() if s.step % self.t.eval_every == 0 else False
            if s.step % self.t.checkpoint_every == 0 or best_changed:
                self.save(best_changed)
            bar.update(1 if self.limit is not None else int(s.elapsed) - bar.n)
            bar.set_postfix(loss=f"{s.last_loss:.3f}", tok_s=f"{s.tokens / max(s.train_seconds, 1e-9):.0f}",
                            val_ppl=f"{s.best_ppl:.2f}")
            if self.on_step:
                self.on_step(s.step)
            kill_point(f"recover-step-{s.step}")
        bar.close()
        if s.history[-1]["step"] != s.step:
            self.save(self.evaluate())
            s.elapsed = base + time.perf_counter() - t0  # the budget covers this last evaluation too
        else:
            self.save(False)
        load_trainable(self.inner, self.best["adapter"])
        return {"stopped_by": reason, "steps": s.step, "tokens": s.tokens, "seconds": round(s.elapsed, 1),
                "train_tokens_per_s": s.tokens / max(s.train_seconds, 1e-9), "best_step": s.best_step,
                "best_val_ppl": s.best_ppl, "initial_val_ppl": s.history[0]["val_ppl"], "history": s.history,
                "losses": s.losses,
                "resumed": resumed, "processes": self.acc.num_processes,
                "parallel": "fsdp" if self.sharded else ("ddp" if self.acc.num_processes > 1 else "single")}
