"""Width pruning plumbing: collect head / MLP-channel importance, decide, slice.

Activation importance: hooks on o_proj and down_proj inputs, no gradients; the same hooks on one
layer at a time read from disk give streamed_activation_scores (the streamed `prune`).
Taylor importance: one backward of the calibration loss per window; each weight's per-window
(w * grad)^2 is folded into its structure scores by a post-accumulate hook and the gradient freed
at once. The element-wise |w * grad| variant (LLM-Pruner's param_first) is kept for comparison.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from edgeprune import registry
from edgeprune.errors import ConfigError
from edgeprune.methods.width import (HeadMode, WidthCut, WidthMethod, WidthShape, channel_contribution_sq,
                                     head_contribution_sq, taylor_saliency, taylor_second_order)
from edgeprune.streaming.stream import hooked, stream_layers
from edgeprune.surgery.ffn import keep_ffn_channels
from edgeprune.surgery.heads import keep_heads


def _shape(cfg) -> dict:
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return dict(n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads, n_kv=cfg.num_key_value_heads,
                hd=hd, inter=cfg.intermediate_size, hidden=cfg.hidden_size)


def _zeros(s: dict) -> dict[str, torch.Tensor]:
    return {"heads": torch.zeros(s["n_layers"], s["n_heads"], dtype=torch.float64),
            "kv": torch.zeros(s["n_layers"], s["n_kv"], dtype=torch.float64),
            "ffn": torch.zeros(s["n_layers"], s["inter"], dtype=torch.float64)}


TOKEN_CHUNK = 256  # tokens per head_contribution_sq call: it holds tokens x heads x hidden float64s
# (a batch of 4 x 256 tokens of Llama-3.1-8B: 1 GiB); 256 tokens keep it at 256 MiB whatever the batch


def _chunked(fn, act: torch.Tensor, *args) -> torch.Tensor:
    """fn(rows, *args) summed over TOKEN_CHUNK-row slices of `act` flattened to (tokens, features);
    fn is a sum over tokens, so this is the same value with bounded memory."""
    flat = act.reshape(-1, act.shape[-1])
    return sum(fn(flat[i:i + TOKEN_CHUNK], *args) for i in range(0, len(flat), TOKEN_CHUNK))


def _activation_hooks(i: int, layer, scores: dict, n_heads: int) -> list:
    """Hooks adding layer i's squared head / channel contributions (o_proj and down_proj inputs) to
    `scores`; the caller removes the returned handles."""
    def on_o(_m, args, w=layer.self_attn.o_proj):
        scores["heads"][i] += _chunked(head_contribution_sq, args[0], w.weight, n_heads)

    def on_down(_m, args, w=layer.mlp.down_proj):  # tokens x channels only: no chunks needed
        scores["ffn"][i] += channel_contribution_sq(args[0].reshape(-1, args[0].shape[-1]), w.weight)
    return [layer.self_attn.o_proj.register_forward_pre_hook(on_o),
            layer.mlp.down_proj.register_forward_pre_hook(on_down)]


def activation_scores(model, windows: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    s = _shape(model.config)
    scores = _zeros(s)
    handles = [h for i, layer in enumerate(model.model.layers)
               for h in _activation_hooks(i, layer, scores, s["n_heads"])]
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(windows), batch_size), desc="width importance", unit="batch"):
                model(input_ids=windows[start:start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: v.sqrt() for k, v in scores.items()}


def streamed_activation_scores(hf_dir: Path, windows: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """activation_scores computed one decoder layer at a time from the safetensors in `hf_dir`
    (streaming/stream.stream_layers): the same hooks on the same layer inputs, so the same scores
    (tests/test_width_stream.py), with one layer in memory instead of the model."""
    from transformers import AutoConfig

    s = _shape(AutoConfig.from_pretrained(hf_dir))
    scores = _zeros(s)
    stream_layers(hf_dir, windows, hooked(lambda i, layer: _activation_hooks(i, layer, scores, s["n_heads"])),
                  batch_size)
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


IMPORTANCE = {"activation": activation_scores, "taylor": taylor_scores}  # the signals this stage collects


def width_scores(model, windows: torch.Tensor, method: WidthMethod, importance: str | None = None) -> dict:
    """The method's own scorer, or the signal it asks for (`importance` overrides either)."""
    if importance is None and method.score is not None:
        return method.score(model, windows)
    kind = importance or method.importance
    if kind not in IMPORTANCE:
        raise ConfigError(f"unknown importance '{kind}' for width method '{method.name}'", where="--importance",
                          fix=f"choose one of: {', '.join(IMPORTANCE)}")
    return IMPORTANCE[kind](model, windows)


def check_saveable(cfg, cut: WidthCut) -> None:
    """Before scoring: the pruned shape must be a config transformers accepts, or the run would
    fail at save after the whole scoring pass. transformers' LlamaConfig wants hidden_size to be a
    multiple of num_attention_heads even when head_dim is explicit (SmolLM2's shapes never hit it;
    a GQA 8/2, head_dim 32, hidden 128 model does)."""
    shape = WidthShape.of(cfg)
    heads, kv = cut.kept_heads(shape)
    if (heads, kv) == (shape.n_heads, shape.n_kv):
        return
    try:
        type(cfg).from_dict({**cfg.to_dict(), "num_attention_heads": heads, "num_key_value_heads": kv,
                             "head_dim": shape.head_dim})
    except Exception as exc:  # transformers' strict validators raise their own error types
        why = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"pruning to {heads} query heads / {kv} KV heads gives a config transformers refuses "
                          f"({why})", where="--fraction",
                          fix=f"choose a fraction that keeps a number of query heads dividing hidden_size "
                              f"{cfg.hidden_size}, or --head-mode groups") from None


def prune_to_cut(model, windows: torch.Tensor, method: WidthMethod, cut: WidthCut,
                 importance: str | None = None) -> dict:
    """Score with `method`, let it decide which units survive `cut`, slice in place; returns the
    decision and the parameter counts."""
    check_saveable(model.config, cut)  # before the scoring pass
    shape = WidthShape.of(model.config)
    before = sum(p.numel() for p in model.model.layers.parameters())
    scores = width_scores(model, windows, method, importance)
    decision = method.decide(scores, shape, cut)
    if decision["heads"]:
        keep_heads(model, decision["heads"])
    if decision["ffn"]:
        keep_ffn_channels(model, decision["ffn"])
    after = sum(p.numel() for p in model.model.layers.parameters())
    cfg = model.config
    widths = {k: getattr(cfg, k) for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
    return width_info(method, importance, cut, before, after, widths, decision)


def width_info(method: WidthMethod, importance: str | None, cut: WidthCut, before: int, after: int, widths: dict,
               decision: dict) -> dict:
    """What a width prune reports, in memory or streamed: `before`/`after` count the decoder
    layers' parameters, `widths` the pruned config's head / KV head / MLP widths."""
    return {"method": method.name, "importance": importance or method.importance,
            "cut": {"heads": list(cut.heads) if cut.heads else None, "ffn_keep": cut.ffn_keep},
            "layer_params_before": before, "layer_params_after": after, "removed_fraction": 1 - after / before,
            **{k: widths[k] for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")},
            "decision": decision}


def prune_width(model, windows: torch.Tensor, method_name: str, fraction: float, head_mode: HeadMode = "groups",
                importance: str | None = None) -> dict:
    """`edgeprune prune --method NAME --fraction F`: the method's cut of `fraction` (refused before
    any scoring when it cannot be made), then prune_to_cut."""
    method: WidthMethod = registry.get("width", method_name)
    cut = method.cut(WidthShape.of(model.config), fraction, head_mode)
    return {**prune_to_cut(model, windows, method, cut, importance), "fraction": fraction, "head_mode": head_mode}
