"""Depth scoring plumbing: hooks collect each layer's input, the method does the maths."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from edgeprune import registry
from edgeprune.config.recipe import Calibration
from edgeprune.store import StepStore
from edgeprune.stages.calib import calibration_windows
from edgeprune.toolchain.hf import load_model


def _forward_with_hooks(model, input_ids: torch.Tensor, handles: list) -> None:
    """One no-grad forward pass for the hooks to observe; the hooks are removed even on error."""
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()


def collect_hiddens(model, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """[h_0..h_L] for one batch, each (tokens, hidden): inputs of every layer + last output."""
    layers = model.model.layers
    captured: list[torch.Tensor] = [None] * (len(layers) + 1)  # type: ignore[list-item]

    def pre_hook(idx):
        def fn(_mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            captured[idx] = h.detach().reshape(-1, h.shape[-1])
        return fn

    def last_hook(_mod, _args, _kwargs, output):
        h = output[0] if isinstance(output, tuple) else output
        captured[-1] = h.detach().reshape(-1, h.shape[-1])

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(last_hook, with_kwargs=True))
    _forward_with_hooks(model, input_ids, handles)
    return captured


def collect_attention(model, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(h_l, attn_l)] per layer: the layer input and its attention sublayer output, (tokens, hidden)."""
    layers = model.model.layers
    h_in: list = [None] * len(layers)
    a_out: list = [None] * len(layers)

    def pre(idx):
        def fn(_mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            h_in[idx] = h.detach().reshape(-1, h.shape[-1])
        return fn

    def post(idx):
        def fn(_mod, _args, output):
            a = output[0] if isinstance(output, tuple) else output
            a_out[idx] = a.detach().reshape(-1, a.shape[-1])
        return fn

    handles = [layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles += [layer.self_attn.register_forward_hook(post(i)) for i, layer in enumerate(layers)]
    _forward_with_hooks(model, input_ids, handles)
    return list(zip(h_in, a_out))


def _batch_inputs(model, batch: torch.Tensor, inputs: str):
    if inputs == "attention":
        return collect_attention(model, batch)
    hiddens = collect_hiddens(model, batch)
    if inputs == "last-token":  # rows are (window, position) flattened: keep each window's last
        hiddens = [h.view(batch.shape[0], batch.shape[1], -1)[:, -1] for h in hiddens]
    return hiddens


# ppl-greedy runs (layers^2 / 2) forward passes: it sees at most this many calibration tokens.
GREEDY_MAX_TOKENS = 2048


def greedy_stats(model, windows: torch.Tensor, method, max_remove: int | None) -> torch.Tensor:
    from edgeprune.streaming.layerwise import GreedyOracle

    n_layers = len(model.model.layers)
    ids = windows[: max(1, GREEDY_MAX_TOKENS // windows.shape[1])]
    return method.stats(GreedyOracle(model, ids), n_layers, max_remove if max_remove else n_layers // 2)


def depth_stats(model, windows: torch.Tensor, method_name: str, batch_size: int = 4,
                max_remove: int | None = None) -> torch.Tensor:
    method = registry.get("depth", method_name)
    if method.inputs == "model":
        return greedy_stats(model, windows, method, max_remove)
    total, weight = None, 0
    for start in tqdm(range(0, len(windows), batch_size), desc=f"scoring {method_name}", unit="batch"):
        batch = windows[start : start + batch_size]
        stats = method.stats(_batch_inputs(model, batch, method.inputs)) * batch.numel()
        total = stats if total is None else total + stats
        weight += batch.numel()
    return total / weight


def score_depth(store: StepStore, hf_dir: Path, hf_hash: str, method_name: str, calib: Calibration,
                max_remove: int | None = None, stream: bool = False):
    """Step: per-layer scores on calibration data, cached by (model, method, calibration).
    `max_remove` only matters to methods that search (ppl-greedy; default half the layers).
    `stream` reads one layer at a time (streaming/stream.py); it is not in the key because both
    paths give the same scores (tests/test_stream_wiring.py)."""
    registry.get("depth", method_name)  # fail on a typo before loading anything

    def build(out: Path) -> dict:
        if stream:
            from transformers import AutoTokenizer

            from edgeprune.streaming.stream import streamed_depth_stats

            windows = calibration_windows(AutoTokenizer.from_pretrained(hf_dir), calib)
            stats = streamed_depth_stats(hf_dir, windows, method_name)
        else:
            model, tok = load_model(hf_dir)
            windows = calibration_windows(tok, calib)
            stats = depth_stats(model, windows, method_name, max_remove=max_remove)
        torch.save(stats, out / "stats.pt")
        scores = registry.get("depth", method_name).layer_scores(stats)
        (out / "scores.json").write_text(json.dumps(scores))
        return {"method": method_name, "windows": list(windows.shape), "layer_scores": scores, "streamed": stream}

    key = {"model": hf_hash, "method": method_name, "calibration": calib.model_dump(mode="json")}
    if registry.get("depth", method_name).inputs == "model":
        key["max_remove"], key["max_tokens"] = max_remove, GREEDY_MAX_TOKENS
    res = store.run("score", key, build)
    stats = torch.load(res.path / "stats.pt", weights_only=True)
    return stats, res
