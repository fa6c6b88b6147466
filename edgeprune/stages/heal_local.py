"""Layer-local distillation: train only the kept layer before each cut to land on the unpruned
teacher's hidden state after the removed run (the target the closed-form heal fits linearly).

The teacher's states are computed once (stages/heal.teacher_states) and every step runs one decoder
layer forward and backward on fixed inputs: no LM head over the 49k vocabulary, no teacher
forward, no gradient for any other weight. Matmuls run under bf16 autocast where the CPU has it
(AMX / AVX-512-BF16) with fp32 master weights. The loss is the relative squared error
||f(x) - t||^2 / ||t||^2 per token, the objective of the closed-form heal.
"""

from __future__ import annotations

import time

import torch

from edgeprune.stages.heal import StudentStates, TeacherStates, cut_layers, origins
from edgeprune.streaming.layerwise import run_layer


def relative_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    err = (pred.float() - target.float()).pow(2).sum(-1)
    return (err / target.float().pow(2).sum(-1).clamp_min(1e-12)).mean()


def bf16_ok() -> bool:
    """bf16 autocast pays on CPUs with native bf16 matmuls; elsewhere it only costs conversions."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _slice_kw(kw: dict, i: int, j: int, batch: int) -> dict:
    out = {}
    for k, v in kw.items():
        out[k] = v[i:j] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch and batch > 1 else v
    return out


def train_layer(layer, inputs: list[torch.Tensor], kws: list[dict], targets: list[torch.Tensor], seconds: float,
                lr: float, micro: int, bf16: bool, max_steps: int | None = None) -> dict:
    """AdamW on `layer`'s own weights for `seconds` (or `max_steps`), cycling over micro-batches."""
    params = list(layer.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    chunks = [(b, i) for b, x in enumerate(inputs) for i in range(0, x.shape[0], micro)]
    steps, tokens, losses, t0 = 0, 0, [], time.perf_counter()
    train_s = 0.0
    while (time.perf_counter() - t0 < seconds or steps == 0) and (max_steps is None or steps < max_steps):
        b, i = chunks[steps % len(chunks)]
        x, t = inputs[b][i:i + micro], targets[b][i:i + micro]
        ts = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = run_layer(layer, x, _slice_kw(kws[b], i, i + micro, inputs[b].shape[0]))
        loss = relative_mse(y, t)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - ts
        steps, tokens = steps + 1, tokens + x.shape[0] * x.shape[1]
        losses.append(float(loss.detach()))
    for p in params:
        p.requires_grad_(False)
    return {"steps": steps, "tokens": tokens, "seconds": round(train_s, 2),
            "tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
            "loss_first": losses[0], "loss_last_10": sum(losses[-10:]) / len(losses[-10:])}


def local_distill(model, teacher: TeacherStates, windows: torch.Tensor, removed: list[int], minutes: float,
                  lr: float = 5e-5, micro: int = 2, batch_size: int = 8, bf16: bool | None = None,
                  max_steps: int | None = None) -> dict:
    """Train the kept layer before each removed run, in order, each for an equal share of `minutes`;
    layer k trains on the inputs the already-trained layers before it produce."""
    bf16 = bf16_ok() if bf16 is None else bf16
    layers = list(model.model.layers)
    origin = origins(teacher.n_layers, removed) + [teacher.n_layers]
    cuts = cut_layers(teacher.n_layers, removed)
    if not cuts:
        return {"layers": [], "bf16": bf16}
    share = minutes * 60 / len(cuts)
    student = StudentStates(model, windows, batch_size)
    log = []
    model.train()
    for k, layer in enumerate(layers):
        if k in cuts:
            info = train_layer(layer, student.h, student.kw, teacher.h[origin[k + 1]], share, lr, micro, bf16,
                               max_steps)
            log.append({"layer": k, "target": origin[k + 1], **info})
        student.advance(layer)
    model.eval()
    tokens = sum(r["tokens"] for r in log)
    seconds = sum(r["seconds"] for r in log)
    return {"layers": log, "bf16": bf16, "tokens": tokens, "train_seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "lr": lr, "micro_batch": micro}
