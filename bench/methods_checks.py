"""Diagnostics behind the pruning-methods table (SmolLM2-135M, float32, CPU).

  sparsegpt: layer reconstruction error ||XW^T - XW'^T||^2 / ||XW^T||^2 of magnitude, Wanda and
             SparseGPT on real linears of one decoder layer, measured on the calibration tokens
             and on held-out tokens, for several calibration sizes.
  taylor:    head / KV-group importance estimators against the true calibration-loss increase when
             that structure is removed (its o_proj input columns zeroed), on the same tokens.

Output: bench/out/methods.checks-<name>.json and a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "out"


def _windows(tok, samples: int, seq_len: int) -> torch.Tensor:
    from edgeprune.config.recipe import Calibration
    from edgeprune.stages.calib import calibration_windows

    return calibration_windows(tok, Calibration(samples=samples, seq_len=seq_len))


def _layer_inputs(model, windows: torch.Tensor, layer_idx: int, batch: int = 8) -> dict[str, torch.Tensor]:
    """Inputs (tokens x in_features) of every linear of decoder layer `layer_idx`."""
    from edgeprune.streaming.layerwise import layer0_inputs, run_layer

    layer = model.model.layers[layer_idx]
    lins = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    got: dict[str, list] = {n: [] for n in lins}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: got[n].append(a[0].reshape(-1, a[0].shape[-1])))
             for n, m in lins.items()]
    try:
        with torch.no_grad():
            for s in range(0, len(windows), batch):
                h, kw = layer0_inputs(model, windows[s:s + batch])
                for i in range(layer_idx + 1):
                    h = run_layer(model.model.layers[i], h, kw)
    finally:
        for hd in hooks:
            hd.remove()
    return {n: torch.cat(v) for n, v in got.items()}


def sparsegpt_check(model, tok, layer_idx: int, cal_sizes: list[int], seq_len: int = 512) -> dict:
    from edgeprune.methods.sparsity import (magnitude_prune, reconstruction_error, sparsegpt_prune,
                                            wanda_prune)

    held = 8  # held-out windows: the last ones of the stream, never used for calibration
    n_cal = max(cal_sizes) // seq_len
    xs = _layer_inputs(model, _windows(tok, n_cal + held, seq_len), layer_idx)
    layer = model.model.layers[layer_idx]
    rows = []
    for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
        w = dict(layer.named_modules())[name].weight.detach().float()
        x_all = xs[name]
        x_held = x_all[-held * seq_len:]
        for n_tok in cal_sizes:
            x = x_all[:n_tok]
            h, sq = x.T @ x, (x * x).sum(0)
            for target, nm in (("50%", None), ("2:4", (2, 4))):
                cands = {"magnitude": magnitude_prune(w, 0.5, nm), "wanda": wanda_prune(w, sq, 0.5, nm),
                         "sparsegpt": sparsegpt_prune(w, h, 0.5, nm)}
                if n_tok == min(cal_sizes):
                    cands["sparsegpt-damp0.1"] = sparsegpt_prune(w, h, 0.5, nm, percdamp=0.1)
                for meth, w_new in cands.items():
                    rows.append({"linear": name, "in_features": w.shape[1], "calib_tokens": n_tok, "target": target,
                                 "method": meth, "err_calib": reconstruction_error(w, w_new, x),
                                 "err_heldout": reconstruction_error(w, w_new, x_held)})
                print(name, n_tok, target, {r["method"]: (round(r["err_calib"], 4), round(r["err_heldout"], 4))
                                            for r in rows[-len(cands):]}, flush=True)
    return {"layer": layer_idx, "seq_len": seq_len, "heldout_tokens": held * seq_len, "rows": rows}


# ---------------------------------------------------------------- taylor


def _head_mask_hooks(model, mask: dict[int, torch.Tensor]) -> list:
    """Multiply each layer's o_proj input by a per-head mask (1 keep, 0 remove)."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def make(m):
        def pre(_mod, args):
            return (args[0] * m.repeat_interleave(hd).to(args[0].dtype),)
        return pre
    return [model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(make(m)) for i, m in mask.items()]


def true_deltas(model, windows: torch.Tensor, structures: list[tuple[int, list[int]]]) -> list[float]:
    """Calibration-loss increase when the query heads `heads` of layer `l` are removed, per structure.
    Hidden states entering each layer are cached so an ablation of layer l reruns layers l.. only."""
    from edgeprune.streaming.layerwise import layer0_inputs, lm_nll, run_layer

    n_heads = model.config.num_attention_heads
    layers = model.model.layers
    h0, kw = layer0_inputs(model, windows)
    inputs, h = [], h0
    with torch.no_grad():
        for layer in layers:
            inputs.append(h)
            h = run_layer(layer, h, kw)
    base = lm_nll(model, h, windows)
    out = []
    for l_idx, heads in structures:
        m = torch.ones(n_heads)
        m[heads] = 0
        handles = _head_mask_hooks(model, {l_idx: m})
        try:
            h = inputs[l_idx]
            with torch.no_grad():
                for layer in layers[l_idx:]:
                    h = run_layer(layer, h, kw)
            out.append(lm_nll(model, h, windows) - base)
        finally:
            for hd in handles:
                hd.remove()
    return out


def taylor_estimators(model, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head estimators (layers x heads), from one backward per calibration window:
      elem_batch: sum_windows sum_head |w * g_window|  (q rows + o columns; our old taylor, batch 1)
      elem_full:  sum_head |w * sum_windows g|         (LLM-Pruner 'param_first': one loss, one |.|)
      second:     sum_head w^2 sum_windows g^2          (LLM-Pruner 'param_second', Fisher diagonal;
                                                        what 'taylor' computes since this check)
      mask_first: |sum_windows d|, d = sum_{o cols of head} w * g = dL/d(head mask)
      mask_fisher: sum_windows d^2 (Fisher of the head-mask; ~2x the loss increase at a minimum)
    Group estimators are built from the per-window mask gradients in `d` (windows x layers x heads)."""
    cfg = model.config
    nh, hd = cfg.num_attention_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    nl = cfg.num_hidden_layers
    for p in model.parameters():
        p.requires_grad_(False)
    per_layer = [[(layer.self_attn.q_proj.weight, 0), (layer.self_attn.o_proj.weight, 1)]
                 for layer in model.model.layers]
    for pl in per_layer:
        for w, _ in pl:
            w.requires_grad_(True)
    est = {k: torch.zeros(nl, nh, dtype=torch.float64) for k in ("elem_batch", "elem_full", "second")}
    d = torch.zeros(len(windows), nl, nh, dtype=torch.float64)
    acc = [[torch.zeros_like(w) for w, _ in pl] for pl in per_layer]

    def per_head(t: torch.Tensor, dim: int) -> torch.Tensor:
        t = t.double() if dim == 0 else t.double().T
        return t.reshape(nh, hd, -1).sum(dim=(1, 2))
    for s in range(len(windows)):
        ids = windows[s:s + 1]
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        for li, pl in enumerate(per_layer):
            for j, (w, dim) in enumerate(pl):
                g = w.grad
                est["elem_batch"][li] += per_head((w * g).abs(), dim)
                est["second"][li] += per_head(w * w * g * g, dim)
                acc[li][j] += g
                if dim == 1:
                    d[s, li] = per_head(w * g, dim)
                w.grad = None
    for li, pl in enumerate(per_layer):
        for j, (w, dim) in enumerate(pl):
            est["elem_full"][li] += per_head((w.detach() * acc[li][j]).abs(), dim)
            w.requires_grad_(False)
    est["mask_first"] = d.sum(0).abs()
    est["mask_fisher"] = (d ** 2).sum(0)
    est["_d"] = d
    return est


def _pick_lowest(scores: torch.Tensor) -> list[int]:
    return [int(torch.argmin(row)) for row in scores]


def _rank_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum())))


def compare(scores: dict[str, torch.Tensor], truth: torch.Tensor) -> dict:
    """truth, scores: (units x candidates); each criterion removes its lowest candidate per unit.
    Returns agreement with the oracle's pick, the summed true loss increase of the picks, and the
    Spearman correlation over all units x candidates (meaningful for criteria on a loss scale)."""
    oracle = _pick_lowest(truth)
    res = {"oracle": {"agree": len(oracle), "sum_true_delta": float(sum(truth[i, j] for i, j in enumerate(oracle)))}}
    for name, sc in scores.items():
        pick = _pick_lowest(sc)
        within = [_rank_corr(sc[i], truth[i]) for i in range(len(sc))]
        res[name] = {"agree": sum(p == o for p, o in zip(pick, oracle)),
                     "sum_true_delta": float(sum(truth[i, j] for i, j in enumerate(pick))),
                     "spearman_pooled": _rank_corr(sc.flatten(), truth.flatten()),
                     "spearman_within_mean": sum(within) / len(within)}
    return res


def taylor_check(model, tok, samples: int, seq_len: int, heads: bool) -> dict:
    from edgeprune.stages.width import activation_scores, elementwise_taylor_scores

    windows = _windows(tok, samples, seq_len)
    cfg = model.config
    nl, nh, nkv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    gs = nh // nkv
    t0 = time.perf_counter()
    act = activation_scores(model, windows)
    old = elementwise_taylor_scores(model, windows)  # the criterion 'taylor' used before this check
    est = taylor_estimators(model, windows)
    d = est.pop("_d")
    print(f"estimators {time.perf_counter() - t0:.0f} s", flush=True)
    g_scores = {"norm (act)": act["heads"].reshape(nl, nkv, gs).sum(2) + act["kv"],
                "taylor (ours, old)": old["heads"].reshape(nl, nkv, gs).sum(2) + old["kv"],
                **{k: v.reshape(nl, nkv, gs).sum(2) for k, v in est.items() if k not in ("mask_first", "mask_fisher")},
                "mask_first": d.reshape(len(windows), nl, nkv, gs).sum(3).sum(0).abs(),
                "mask_fisher": (d.reshape(len(windows), nl, nkv, gs).sum(3) ** 2).sum(0)}
    t0 = time.perf_counter()
    truth_g = torch.tensor(true_deltas(model, windows, [(l_idx, list(range(g * gs, (g + 1) * gs)))
                                                        for l_idx in range(nl) for g in range(nkv)])).reshape(nl, nkv)
    print(f"group ablations {time.perf_counter() - t0:.0f} s", flush=True)
    out = {"calib_tokens": windows.numel(), "groups": compare(g_scores, truth_g),
           "group_scores": {k: v.tolist() for k, v in g_scores.items()},
           "truth_groups": truth_g.tolist()}
    if heads:
        # the taylor-20% decision: one query head out of each KV group (units = layer x group)
        h_scores = {"norm (act)": act["heads"], "taylor (ours, old)": old["heads"], **est}
        truth_h = torch.tensor(true_deltas(model, windows, [(l_idx, [h]) for l_idx in range(nl) for h in range(nh)]))
        unit = lambda t: t.reshape(nl * nkv, gs)  # noqa: E731
        out["heads"] = compare({k: unit(v) for k, v in h_scores.items()}, unit(truth_h.reshape(nl, nh)))
        out["truth_heads"] = truth_h.reshape(nl, nh).tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("check", choices=["sparsegpt", "taylor"])
    ap.add_argument("--hf", default=str(OUT / "smollm2-hf"))
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--cal", type=int, nargs="*", default=[2048, 8192, 32768])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--heads", action="store_true", help="also ablate single query heads (3x the time)")
    args = ap.parse_args()
    from edgeprune.toolchain.hf import load_model

    torch.manual_seed(0)
    model, tok = load_model(Path(args.hf))
    t0 = time.perf_counter()
    if args.check == "sparsegpt":
        res = sparsegpt_check(model, tok, args.layer, args.cal)
    else:
        res = taylor_check(model, tok, args.samples, args.seq_len, args.heads)
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("truth")}, indent=1))
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    (OUT / f"methods.checks-{args.check}.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
