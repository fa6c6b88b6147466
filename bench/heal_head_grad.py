"""The global distillation's head step, autograd against the closed form (methods/distill.kd_topk_head):
seconds per 1,024 tokens through SmolLM2's frozen 49,152 x 576 bf16 head with top-64 KD, the two
alternated in one process so both see the same minute.

    python bench/heal_head_grad.py --rounds 6 --out bench/out/heal/head-grad.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from edgeprune.methods.distill import kd_loss_topk, kd_topk_head

N, D, V, K, CHUNK = 1024, 576, 49152, 64, 512  # the throughput bench's 4 x 256 tokens, the step's chunk


def autograd_head(h0, head, vals, idx):
    h = h0.clone().requires_grad_(True)
    for s in range(0, N, CHUNK):
        logits = torch.nn.functional.linear(h[s:s + CHUNK].to(head.dtype), head)
        (kd_loss_topk(logits, vals[s:s + CHUNK], idx[s:s + CHUNK], 1.0) * (CHUNK / N)).backward()
    return h.grad


def closed_form_head(h0, head, vals, idx):
    g = torch.empty_like(h0)
    for s in range(0, N, CHUNK):
        _, g[s:s + CHUNK] = kd_topk_head(h0[s:s + CHUNK], head, vals[s:s + CHUNK], idx[s:s + CHUNK], 1.0, 1.0 / N)
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    head = (torch.randn(V, D, generator=g) / 24).bfloat16()
    h0, vals = torch.randn(N, D, generator=g), torch.randn(N, K, generator=g) * 3
    idx = torch.randint(0, V, (N, K), generator=g).int()
    a, b = autograd_head(h0, head, vals, idx), closed_form_head(h0, head, vals, idx)  # warm-up, and agreement
    times = {"autograd": [], "closed_form": []}
    for _ in range(args.rounds):
        for name, f in (("autograd", autograd_head), ("closed_form", closed_form_head)):
            t = time.perf_counter()
            f(h0, head, vals, idx)
            times[name].append(round(time.perf_counter() - t, 4))
    med = {k: statistics.median(v) for k, v in times.items()}
    data = {"command": "python bench/heal_head_grad.py " + " ".join(sys.argv[1:]), "tokens": N, "vocab": V,
            "hidden": D, "topk": K, "chunk": CHUNK, "threads": args.threads, "torch": torch.__version__,
            "seconds": times, "median_s": med, "speedup": round(med["autograd"] / med["closed_form"], 3),
            "max_abs_grad_diff": float((a - b).abs().max()), "grad_scale": float(a.abs().max())}
    print(data)
    from benchout import write_json

    write_json(args.out, data)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
