"""Teacher signal for distillation: the unpruned model run on the fly, or its top-K logits
computed once, cached to disk, and the teacher dropped from memory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from edgeprune.atomic import atomic_write
from edgeprune.errors import ModelError
from edgeprune.methods.distill import kd_loss, kd_loss_topk
from edgeprune.toolchain.torch_compile import row_logsumexp


def check_vocab(student, teacher, where: str) -> None:
    s, t = student.config.vocab_size, teacher.config.vocab_size
    if s != t:
        raise ModelError(f"teacher vocabulary ({t}) differs from the student's ({s})", where=where,
                         fix="distil from the model the student was pruned from")


class LiveTeacher:
    """Runs the teacher forward for each batch (both models in memory)."""

    def __init__(self, model, device=None):
        self.model = model.eval().to(device) if device is not None else model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def loss(self, student_logits, ids, mask, index, temperature: float) -> torch.Tensor:
        with torch.no_grad():
            t = self.model(input_ids=ids, attention_mask=mask).logits
        return kd_loss(student_logits, t, temperature, mask.bool())


class CachedTeacher:
    """Top-K teacher logits per training block, read from a tensor file."""

    def __init__(self, values: torch.Tensor, indices: torch.Tensor):
        self.values, self.indices = values, indices

    def loss(self, student_logits, ids, mask, index, temperature: float) -> torch.Tensor:
        v = self.values[index].to(student_logits.device)
        i = self.indices[index].to(student_logits.device)
        return kd_loss_topk(student_logits, v, i, temperature, mask.bool())


class TopK(NamedTuple):
    """The teacher's K largest logits per position, (rows, seq, K) fp16 values and int32 ids, and
    `rest` (rows, seq) fp32: log of its probability outside those K (softmax at T = 1), exact from
    the full logits, or None where it was not asked for; methods/distill keeps it as a tail class."""
    values: torch.Tensor
    indices: torch.Tensor
    rest: torch.Tensor | None


@torch.no_grad()
def topk_of_logits(logits: torch.Tensor, k: int, tail: bool = True) -> TopK:
    """A TopK of full (..., vocab) logits: K largest (fp16 values, int32 ids), and with `tail` the
    log of the softmax mass outside them (fp32, on the CPU)."""
    top = logits.topk(k, dim=-1)
    rest = None
    if tail:
        top_mass = (top.values.float().logsumexp(-1) - row_logsumexp()(logits)).exp()
        # fp32 resolves a tail down to ~1e-7; below, it is rounding, and the floor keeps log finite
        rest = torch.log1p(-top_mass.clamp_max(1 - 1e-7)).cpu()
    return TopK(top.values.half().cpu(), top.indices.int().cpu(), rest)


def _cat(parts: list[TopK], tail: bool) -> TopK:
    """Rows of several TopKs, in order, as one."""
    return TopK(torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts]),
                torch.cat([p.rest for p in parts]) if tail else None)


@torch.no_grad()
def teacher_topk(teacher, ids: torch.Tensor, k: int, mask: torch.Tensor | None = None, batch: int = 4,
                 bf16: bool = False, progress: bool = True, tail: bool = True) -> TopK:
    """The teacher's top-K logits and (with `tail`) tail mass for every position of `ids`, on the
    CPU; `bf16` runs the forward under bf16 autocast (the heal stage's, on CPUs with AMX)."""
    dev = next(teacher.parameters()).device
    parts = []
    for s in tqdm(range(0, len(ids), batch), desc=f"teacher top-{k}", unit="batch", leave=False, disable=not progress):
        kw = {} if mask is None else {"attention_mask": mask[s:s + batch].to(dev)}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = teacher(input_ids=ids[s:s + batch].to(dev), **kw).logits
        parts.append(topk_of_logits(logits, k, tail))
    return _cat(parts, tail)


@torch.no_grad()
def head_topk(teacher, final: torch.Tensor, k: int, bf16: bool = False, tail: bool = True) -> TopK:
    """The same TopK from the teacher's last decoder layer output `final` (rows, seq, hidden), known
    already: only its final norm and head run, not its layers (`bf16`: under bf16 autocast, as the
    head runs in teacher_topk)."""
    with torch.autocast(final.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = teacher.lm_head(teacher.model.norm(final))
    return topk_of_logits(logits, k, tail)


class FixedTopK:
    """A teacher signal computed beforehand: rows a..b of a TopK; `tail` False drops `rest`."""

    def __init__(self, topk: TopK, tail: bool = True):
        self.topk, self.tail, self.seconds, self.rows, self.reused = topk, tail, 0.0, len(topk.values), 0

    def batch(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        t = self.topk
        return t.values[a:b], t.indices[a:b], t.rest[a:b] if self.tail else None


class LazyTopK:
    """The teacher's top-K of rows a..b, computed the first time a step asks for them and kept for
    later epochs. A time budget that covers the teacher then pays only for the windows training
    reaches: computed up front, the 764 windows of a 12-minute run took 8 minutes of teacher on a
    CPU without AMX, and training used two thirds of them.

    `final`: the teacher's last decoder layer output for the first len(final) rows, where the caller
    has it (the heal stage's fp32 teacher states of its fitting windows): those rows run only the
    norm and the head, about 0.19 s a window of 512 against 0.63 s for a full bf16 forward on a
    2-core CPU without AMX, and their top-K comes from fp32 layers, the more exact of the two.
    `rows` counts the full forwards, `reused` the rows made from `final`."""

    def __init__(self, teacher, windows: torch.Tensor, k: int, bf16: bool, tail: bool = True,
                 final: torch.Tensor | None = None):
        if final is not None and (final.shape[:2] != windows[:len(final)].shape or len(final) > len(windows)):
            raise ValueError(f"teacher states {tuple(final.shape)} do not match the first rows of windows "
                             f"{tuple(windows.shape)}")
        self.teacher, self.windows, self.k, self.bf16, self.tail = teacher, windows, k, bf16, tail
        self.final = final
        self.cache: dict[tuple[int, int], TopK] = {}
        self.seconds, self.rows, self.reused = 0.0, 0, 0

    def batch(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if (a, b) not in self.cache:
            t0 = time.perf_counter()
            known = 0 if self.final is None else max(0, min(b, len(self.final)) - a)
            parts = [head_topk(self.teacher, self.final[a:a + known], self.k, self.bf16, self.tail)] if known else []
            if a + known < b:
                parts.append(teacher_topk(self.teacher, self.windows[a + known:b], self.k, batch=b - a - known,
                                          bf16=self.bf16, progress=False, tail=self.tail))
            self.cache[a, b] = parts[0] if len(parts) == 1 else _cat(parts, self.tail)
            self.seconds += time.perf_counter() - t0
            self.rows += b - a - known
            self.reused += known
        return self.cache[a, b]  # made with tail=self.tail: its rest is None without the tail


def build_topk_cache(teacher, blocks, k: int, path: Path, batch: int = 4) -> CachedTeacher:
    """Compute (or reuse) the top-K cache for every block in `blocks`; fp16 values, int32 ids."""
    if path.is_file():
        data = load_file(path)  # safetensors: a cache file can never run code when read
        if data["values"].shape[:2] == tuple(blocks.ids.shape) and data["values"].shape[2] == k:
            return CachedTeacher(data["values"], data["indices"])
    values, indices, _ = teacher_topk(teacher, blocks.ids, k, blocks.mask, batch, tail=False)
    atomic_write(path, lambda tmp: save_file({"values": values.contiguous(), "indices": indices.contiguous()}, tmp))
    return CachedTeacher(values, indices)
