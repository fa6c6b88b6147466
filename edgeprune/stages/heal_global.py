"""Short global distillation after healing (the Minitron recipe, arXiv 2407.14679): the healed
student learns the unpruned teacher's next-token distribution on calibration text, against the
teacher's top-K logits computed once.

What makes it fit a CPU budget (bench/heal_throughput.py measures it against the lean LoRA loop):
- the teacher runs once, before training, and only its top-K logits (fp16 values, int32 ids) are kept;
- the student's layers below the first cut are frozen: their output is computed once per window
  and every step starts from it;
- the embeddings and the tied 49k-vocabulary head are frozen, and the head's logits are formed a
  chunk of positions at a time: each chunk's loss gradient into the final hidden state is computed
  in closed form (methods/distill.kd_topk_head), so the (tokens x vocab) logits are never held
  whole, and no autograd graph is built over them;
- AdamW runs fused (one kernel over all parameters, not a loop of elementwise ops);
- matmuls under bf16 autocast where the CPU has native bf16 (AMX here), fp32 master weights.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm import tqdm

from edgeprune.methods.distill import kd_topk_head
from edgeprune.stages.heal_local import bf16_ok
from edgeprune.stages.heal import StudentStates
from edgeprune.streaming.layerwise import run_layer


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


def kd_step(model, x: torch.Tensor, kw: dict, head: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
            first: int, temperature: float, chunk: int, bf16: bool) -> float:
    """Layers `first`.. forward from the cached prefix state `x`, chunked top-K KD loss through the
    frozen `head` weight, backward; returns the micro-batch's mean loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for layer in list(model.model.layers)[first:]:
            x = run_layer(layer, x, kw)
        hidden = model.model.norm(x)
    h = hidden.detach().flatten(0, 1)
    v, i = values.flatten(0, 1), indices.flatten(0, 1)
    n, total = h.shape[0], 0.0
    grad = torch.empty_like(h)
    for s in range(0, n, chunk):  # the head is frozen: its gradient goes into h only, in closed form
        part, grad[s:s + chunk] = kd_topk_head(h[s:s + chunk], head, v[s:s + chunk], i[s:s + chunk],
                                               temperature, 1.0 / n)
        total += part
    hidden.backward(grad.view_as(hidden))
    return total


def lr_at(frac: float, base: float, warm: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up over the first `warm` of the budget, then cosine down to floor x base."""
    if frac < warm:
        return base * (frac / warm if warm else 1.0)
    f = min(1.0, (frac - warm) / (1 - warm))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * f)))


def global_distill(model, windows: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, first: int,
                   minutes: float, lr: float = 5e-5, micro: int = 4, temperature: float = 1.0, chunk: int = 512,
                   bf16: bool | None = None, max_steps: int | None = None) -> dict:
    """AdamW on layers `first`.. for `minutes` of wall clock (or `max_steps`), cycling over `windows`
    in micro-batches, learning rate on a warm-up + cosine schedule over the budget."""
    bf16 = bf16_ok() if bf16 is None else bf16
    params = freeze_below(model, first)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    t_prefix = time.perf_counter()
    prefix = prefix_states(model, windows, first, micro, bf16)
    t_prefix = time.perf_counter() - t_prefix
    # Cast once: autocast would re-cast the frozen 49k x hidden head in every chunk of every step.
    head = model.lm_head.weight.detach().to(torch.bfloat16 if bf16 else torch.float32)
    batches = [(s, min(s + micro, len(windows))) for s in range(0, len(windows), micro)]
    budget, steps, tokens, losses = minutes * 60, 0, 0, []
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
        losses.append(kd_step(model, x, kw, head, values[a:b], indices[a:b], first, temperature, chunk, bf16))
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps, tokens = steps + 1, tokens + int(windows[a:b].numel())
    seconds = time.perf_counter() - t0
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10):]
    return {"first_layer": first, "prefix_s": round(t_prefix, 1), "steps": steps, "tokens": tokens, "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "lr": lr, "micro_batch": micro,
            "temperature": temperature, "topk": int(values.shape[-1]), "bf16": bf16,
            "epochs": round(tokens / max(int(windows.numel()), 1), 2),
            "loss_first_10pct": sum(head) / len(head), "loss_last_10pct": sum(tail) / len(tail)}
