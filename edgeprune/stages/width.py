"""Width pruning plumbing: collect head / MLP-channel importance, decide, slice.

Activation importance: hooks on o_proj and down_proj inputs, no gradients.
Taylor importance: one backward of the calibration loss per window; each weight's per-window
(w * grad)^2 is folded into its structure scores by a post-accumulate hook and the gradient freed
at once. The element-wise |w * grad| variant (LLM-Pruner's param_first) is kept for comparison.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from edgeprune import registry
from edgeprune.errors import ConfigError
from edgeprune.methods.width import (HeadMode, WidthMethod, aligned_keep, channel_contribution_sq, coupled_counts,
                                     head_contribution_sq, keep_channels, keep_heads_per_group, keep_kv_groups,
                                     taylor_saliency, taylor_second_order)
from edgeprune.surgery.ffn import keep_ffn_channels
from edgeprune.surgery.heads import keep_heads

ALIGN = 32


def _shape(cfg) -> dict:
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return dict(n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads, n_kv=cfg.num_key_value_heads,
                hd=hd, inter=cfg.intermediate_size, hidden=cfg.hidden_size)


def _zeros(s: dict) -> dict[str, torch.Tensor]:
    return {"heads": torch.zeros(s["n_layers"], s["n_heads"], dtype=torch.float64),
            "kv": torch.zeros(s["n_layers"], s["n_kv"], dtype=torch.float64),
            "ffn": torch.zeros(s["n_layers"], s["inter"], dtype=torch.float64)}


def activation_scores(model, windows: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    s = _shape(model.config)
    scores = _zeros(s)
    handles = []
    for i, layer in enumerate(model.model.layers):
        def on_o(_m, args, i=i, w=layer.self_attn.o_proj):
            scores["heads"][i] += head_contribution_sq(args[0].reshape(-1, args[0].shape[-1]), w.weight, s["n_heads"])

        def on_down(_m, args, i=i, w=layer.mlp.down_proj):
            scores["ffn"][i] += channel_contribution_sq(args[0].reshape(-1, args[0].shape[-1]), w.weight)
        handles += [layer.self_attn.o_proj.register_forward_pre_hook(on_o),
                    layer.mlp.down_proj.register_forward_pre_hook(on_down)]
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(windows), batch_size), desc="width importance", unit="batch"):
                model(input_ids=windows[start:start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: v.sqrt() for k, v in scores.items()}


def _weight_parts(layer, hd: int, with_kv: bool) -> list:
    """(linear, score key, slice dim, slice size) of the weights that remove each structure."""
    a, m = layer.self_attn, layer.mlp
    kv = [(a.k_proj, "kv", 0, hd), (a.v_proj, "kv", 0, hd)] if with_kv else []
    return [(a.q_proj, "heads", 0, hd), (a.o_proj, "heads", 1, hd), *kv,
            (m.gate_proj, "ffn", 0, 1), (m.up_proj, "ffn", 0, 1), (m.down_proj, "ffn", 1, 1)]


def _backward_scores(model, batches: list[torch.Tensor], saliency, with_kv: bool, unit: str) -> dict:
    """One backward of the calibration loss per batch; a post-accumulate hook folds each weight's
    saliency(w, grad, dim, size) into its structure scores and frees the gradient at once, so one
    weight's gradient is alive at a time."""
    s = _shape(model.config)
    scores = _zeros(s)
    for p in model.parameters():
        p.requires_grad_(False)
    handles = []
    for i, layer in enumerate(model.model.layers):
        for lin, key, dim, size in _weight_parts(layer, s["hd"], with_kv):
            def hook(p, i=i, key=key, dim=dim, size=size):
                scores[key][i] += saliency(p.data, p.grad, dim, size)
                p.grad = None
            lin.weight.requires_grad_(True)
            handles.append(lin.weight.register_post_accumulate_grad_hook(hook))
    try:
        for ids in tqdm(batches, desc="taylor importance", unit=unit):
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
    return scores


def elementwise_taylor_scores(model, windows: torch.Tensor, batch_size: int = 2) -> dict[str, torch.Tensor]:
    """Per-batch sum_batches sum_group |w * dL/dw| (LLM-Pruner's element-wise 'param_first').
    Not the default: on SmolLM2 the KV groups it removes (one per layer) cost +3.04 nats of
    calibration loss when removed one at a time, vs +0.37 for the second-order choice and +0.13 for
    the oracle (bench/methods_checks.py taylor)."""
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    return _backward_scores(model, batches, taylor_saliency, with_kv=True, unit="batch")


def taylor_scores(model, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Second-order Taylor importance (LLM-Pruner 'param_second'): one backward per calibration
    window, sum_windows sum_structure (w * dL_window/dw)^2, from the weights that remove the
    structure: q rows + o_proj columns per query head, gate/up rows + down columns per MLP channel.
    'kv' stays 0: a KV group's score is its query heads' (the check that chose this criterion
    measured q + o only). One window per backward: the squares need per-sample gradients."""
    batches = [windows[w:w + 1] for w in range(len(windows))]
    return _backward_scores(model, batches, taylor_second_order, with_kv=False, unit="window")


def head_cut(cfg, method: WidthMethod, fraction: float, head_mode: HeadMode) -> tuple[str, int] | None:
    """What a width decision removes of the heads, from the shapes alone (before any scoring):
    ("groups", KV groups removed) or ("per-group", query heads removed from every group), or None.
    The heads method removes whole units; a fraction that rounds to none or all of them is refused
    instead of being bumped to one unit (--fraction 0.1 of 2 groups used to remove half the heads)."""
    s = _shape(cfg)
    gs = s["n_heads"] // s["n_kv"]
    if method.name == "taylor":
        per_group, _ = coupled_counts(s["hidden"], s["n_heads"], s["n_kv"], s["hd"], s["inter"], fraction, ALIGN)
        return ("per-group", per_group) if per_group else None
    if method.name != "heads":
        return None
    units, unit = (s["n_kv"], "KV groups") if head_mode == "groups" else (gs, "query heads per KV group")
    n = round(fraction * units)
    if not 0 < n < units:
        steps = ", ".join(f"{k / units:.3g}" for k in range(1, units)) or "none: nothing to remove"
        raise ConfigError(f"--fraction {fraction:g} of {units} {unit} removes {n} (round({fraction * units:.3g})); "
                          f"the heads method removes whole units", where="--fraction",
                          fix=f"choose one of {steps}" + (" or --head-mode per-group" if head_mode == "groups" else ""))
    return head_mode, n


def kept_shape(cfg, cut: tuple[str, int] | None) -> tuple[int, int]:
    """(query heads, KV heads) after `cut`."""
    s = _shape(cfg)
    if cut is None:
        return s["n_heads"], s["n_kv"]
    mode, n = cut
    gs = s["n_heads"] // s["n_kv"]
    return (s["n_heads"] - n * gs, s["n_kv"] - n) if mode == "groups" else (s["n_heads"] - n * s["n_kv"], s["n_kv"])


def check_saveable(cfg, cut: tuple[str, int] | None) -> None:
    """Before scoring: the pruned shape must be a config transformers accepts, or the run would
    fail at save after the whole scoring pass. transformers' LlamaConfig wants hidden_size to be a
    multiple of num_attention_heads even when head_dim is explicit (SmolLM2's shapes never hit it;
    a GQA 8/2, head_dim 32, hidden 128 model does)."""
    heads, kv = kept_shape(cfg, cut)
    if (heads, kv) == (cfg.num_attention_heads, cfg.num_key_value_heads):
        return
    try:
        type(cfg).from_dict({**cfg.to_dict(), "num_attention_heads": heads, "num_key_value_heads": kv,
                             "head_dim": _shape(cfg)["hd"]})
    except Exception as exc:  # transformers' strict validators raise their own error types
        why = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"pruning to {heads} query heads / {kv} KV heads gives a config transformers refuses "
                          f"({why})", where="--fraction",
                          fix=f"choose a fraction that keeps a number of query heads dividing hidden_size "
                              f"{cfg.hidden_size}, or --head-mode groups") from None


def decide(cfg, method: WidthMethod, scores: dict, fraction: float, head_mode: HeadMode) -> dict:
    """{'heads': per-layer kept query heads or None, 'ffn': per-layer kept channels or None}."""
    s = _shape(cfg)
    heads = ffn = None
    cut = head_cut(cfg, method, fraction, head_mode)
    if method.name == "taylor":
        _, n_keep = coupled_counts(s["hidden"], s["n_heads"], s["n_kv"], s["hd"], s["inter"], fraction, ALIGN)
        ffn = keep_channels(scores["ffn"], n_keep) if n_keep < s["inter"] else None
    elif method.name == "ffn":
        ffn = keep_channels(scores["ffn"], aligned_keep(s["inter"], fraction, ALIGN))
    if cut is not None and cut[0] == "groups":
        heads = keep_kv_groups(scores["heads"], scores["kv"], cut[1])
    elif cut is not None:
        heads = keep_heads_per_group(scores["heads"], s["n_kv"], cut[1])
    return {"heads": heads, "ffn": ffn}


def prune_width(model, windows: torch.Tensor, method_name: str, fraction: float, head_mode: HeadMode = "groups",
                importance: str | None = None) -> dict:
    """Score, decide and slice in place; returns the decision and the parameter counts."""
    method: WidthMethod = registry.get("width", method_name)
    kind = importance or method.importance
    check_saveable(model.config, head_cut(model.config, method, fraction, head_mode))  # before the scoring pass
    if method.name == "ffn":
        aligned_keep(_shape(model.config)["inter"], fraction, ALIGN)
    before = sum(p.numel() for p in model.model.layers.parameters())
    scores = taylor_scores(model, windows) if kind == "taylor" else activation_scores(model, windows)
    decision = decide(model.config, method, scores, fraction, head_mode)
    if decision["heads"]:
        keep_heads(model, decision["heads"])
    if decision["ffn"]:
        keep_ffn_channels(model, decision["ffn"])
    after = sum(p.numel() for p in model.model.layers.parameters())
    cfg = model.config
    return {"method": method_name, "importance": kind, "fraction": fraction, "head_mode": head_mode,
            "layer_params_before": before, "layer_params_after": after, "removed_fraction": 1 - after / before,
            "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size, "decision": decision}
