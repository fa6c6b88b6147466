"""Short global distillation after healing (the Minitron recipe, arXiv 2407.14679): the healed
student learns the unpruned teacher's next-token distribution on calibration text, against the
teacher's top-K logits computed once.

What makes it fit a CPU budget (bench/heal_throughput.py measures it against the lean LoRA loop):
- the teacher runs once per window, the first time a step uses it (recovery.teacher.LazyTopK), inside
  the budget, and only its top-K logits (fp16 values, int32 ids) and its mass outside them are kept;
- the student's layers below the first cut are frozen: their output is computed once per window
  and every step starts from it;
- the embeddings and the tied 49k-vocabulary head are frozen, and the head's logits are formed a
  chunk of positions at a time: each chunk's loss gradient into the final hidden state is computed
  in closed form (methods/distill.kd_topk_head), so the (tokens x vocab) logits are never held
  whole, and no autograd graph is built over them;
- AdamW runs fused (one kernel over all parameters, not a loop of elementwise ops);
- matmuls under bf16 autocast where the CPU has native bf16 (AMX here), fp32 master weights;
- with `compile`, the trained layers and the head's loss run through torch.compile, which fuses the
  elementwise work around the matmuls (RMSNorm, rotary, SiLU, the softmax over 49k logits) into
  loops of its own; it costs a first step of some seconds (`first_step_s`), inside the budget.
"""

from __future__ import annotations

import functools
import math
import time

import torch
from tqdm import tqdm

from edgeprune.methods.distill import kd_topk_head, kd_topk_parts_compiled
from edgeprune.stages.heal_local import bf16_ok
from edgeprune.stages.heal import StudentStates
from edgeprune.streaming.layerwise import run_layer
from edgeprune.toolchain.torch_compile import compile_ok


def freeze_below(model, first: int) -> list[torch.nn.Parameter]:
    """Trainable: decoder layers `first`.. and the final norm; everything else frozen. Returns them."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for layer in list(model.model.layers)[first:] for p in layer.parameters()]
    params += list(model.model.norm.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


@torch.no_grad()
def prefix_states(model, windows: torch.Tensor, first: int, micro: int, bf16: bool) -> list[tuple]:
    """(input of layer `first`, the layers' keyword arguments) per micro-batch: the frozen prefix
    gives the same output in every epoch, so it runs once instead of in every step."""
    student = StudentStates(model, windows, micro)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for layer in tqdm(list(model.model.layers)[:first], desc="frozen prefix", unit="layer", leave=False):
            student.advance(layer)
    return [(x.float(), kw) for x, kw in zip(student.h, student.kw)]


@torch.no_grad()
def _compiled_head(h, head, values, indices, temperature: float, scale: float, rest=None) -> tuple[float, torch.Tensor]:
    loss, grad = kd_topk_parts_compiled()(h, head, values, indices, temperature, scale, rest)
    return float(loss), grad


def kd_step(model, x: torch.Tensor, kw: dict, head: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
            first: int, temperature: float, chunk: int, bf16: bool, compiled: bool = False,
            rest: torch.Tensor | None = None) -> float:
    """Layers `first`.. forward from the cached prefix state `x`, chunked top-K KD loss through the
    frozen `head` weight, backward; returns the micro-batch's mean loss. `compiled`: layers and head
    loss through torch.compile (same maths). `rest`: the teacher's tail mass, kept as a class."""
    layer_fn, head_fn = (_compiled_layer(), _compiled_head) if compiled else (run_layer, kd_topk_head)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for layer in list(model.model.layers)[first:]:
            x = layer_fn(layer, x, kw)
        hidden = model.model.norm(x)
    h = hidden.detach().flatten(0, 1)
    v, i = values.flatten(0, 1), indices.flatten(0, 1)
    r = rest.flatten(0, 1) if rest is not None else None
    n, total = h.shape[0], 0.0
    grad = torch.empty_like(h)
    for s in range(0, n, chunk):  # the head is frozen: its gradient goes into h only, in closed form
        part, grad[s:s + chunk] = head_fn(h[s:s + chunk], head, v[s:s + chunk], i[s:s + chunk], temperature, 1.0 / n,
                                          None if r is None else r[s:s + chunk])
        total += part
    hidden.backward(grad.view_as(hidden))
    return total


@functools.cache
def _compiled_layer():
    """run_layer through torch.compile, made once: every decoder layer shares its graph (the layer's
    weights are inputs to it, not constants), so it compiles once per input shape."""
    return torch.compile(run_layer, dynamic=False)


def lr_at(frac: float, base: float, warm: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up over the first `warm` of the budget, then cosine down to floor x base."""
    if frac < warm:
        return base * (frac / warm if warm else 1.0)
    f = min(1.0, (frac - warm) / (1 - warm))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * f)))


def global_distill(model, windows: torch.Tensor, teacher, first: int, minutes: float, lr: float = 5e-5,
                   micro: int = 4, temperature: float = 1.0, chunk: int = 512, bf16: bool | None = None,
                   max_steps: int | None = None, compile: bool = False) -> dict:
    """AdamW on layers `first`.. for `minutes` of wall clock (or `max_steps`), cycling over `windows`
    in micro-batches, learning rate on a warm-up + cosine schedule over the budget. `teacher`:
    recovery.teacher.FixedTopK or LazyTopK, whose `batch(a, b)` gives rows a..b's top-K values, ids
    and tail mass (None: the top K renormalised); a lazy teacher's passes run inside the budget.
    `compile`: through torch.compile where a C++ compiler is present. tokens_per_s counts the
    student's steps only, without the first (compiling) one and without the teacher's passes."""
    if teacher.tail and temperature != 1:
        raise ValueError("the teacher's tail mass is measured at temperature 1; distil at 1 or leave it out")
    bf16 = bf16_ok() if bf16 is None else bf16
    compile = compile and compile_ok()
    params = freeze_below(model, first)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    t_prefix = time.perf_counter()
    prefix = prefix_states(model, windows, first, micro, bf16)
    t_prefix = time.perf_counter() - t_prefix
    # Cast once: autocast would re-cast the frozen 49k x hidden head in every chunk of every step.
    head = model.lm_head.weight.detach().to(torch.bfloat16 if bf16 else torch.float32)
    batches = [(s, min(s + micro, len(windows))) for s in range(0, len(windows), micro)]
    budget, steps, tokens, losses, first_step = minutes * 60, 0, 0, [], None
    model.train()
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if (steps and elapsed >= budget) or (max_steps is not None and steps >= max_steps):
            break
        frac = steps / max_steps if max_steps else elapsed / max(budget, 1e-9)
        for g in opt.param_groups:
            g["lr"] = lr_at(frac, lr)
        j = steps % len(batches)
        a, b = batches[j]
        x, kw = prefix[j]
        values, indices, rest = teacher.batch(a, b)
        losses.append(kd_step(model, x, kw, head, values, indices, first, temperature, chunk, bf16,
                              compiled=compile, rest=rest))
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps, tokens = steps + 1, tokens + int(windows[a:b].numel())
        if first_step is None:
            first_step = (time.perf_counter() - t0, tokens, teacher.seconds)
    seconds = time.perf_counter() - t0
    steady_s = seconds - first_step[0] - (teacher.seconds - first_step[2])
    steady_tokens = tokens - first_step[1]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = losses[: max(1, len(losses) // 10)]
    end = losses[-max(1, len(losses) // 10):]
    return {"first_layer": first, "prefix_s": round(t_prefix, 1), "steps": steps, "tokens": tokens, "seconds": round(seconds, 1),
            "tokens_per_s": round(steady_tokens / steady_s, 1) if steady_tokens else round(tokens / max(seconds, 1e-9), 1),
            "first_step_s": round(first_step[0], 1), "compiled": compile, "lr": lr, "micro_batch": micro,
            "temperature": temperature, "topk": int(values.shape[-1]), "tail": teacher.tail, "bf16": bf16,
            "teacher_topk_s": round(teacher.seconds, 1), "teacher_rows": teacher.rows,
            "teacher_reused_rows": teacher.reused,
            "epochs": round(tokens / max(int(windows.numel()), 1), 2),
            "loss_first_10pct": sum(head) / len(head), "loss_last_10pct": sum(end) / len(end)}
