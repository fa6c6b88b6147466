"""Importance-matrix step: per weight matrix, the mean squared activation of each input column on
calibration text, collected from the model that is about to be quantized and written in llama.cpp's
imatrix format (toolchain/imatrix_file.py).

What llama.cpp's llama-imatrix collects, the same way: every matrix multiply of a decoder block
(attention q/k/v/output, FFN gate/up/down), not the output head (its tool leaves it out by default),
summing x_j^2 over every token. Computing it here rather than with llama-imatrix keeps it in the
pipeline's own calibration data and store, and needs no extra llama.cpp binary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgeprune.config.recipe import Calibration
from edgeprune.store import StepStore
from edgeprune.stages.calib import calibration_windows
from edgeprune.streaming.stream import hooked, stream_layers
from edgeprune.toolchain import imatrix_file
from edgeprune.toolchain.hf import gguf_weight_name, load_model

FILE = "imatrix.gguf"
BATCH = 4


def _summing(name: str, sums: dict, counts: dict):
    """A forward pre-hook adding the squares of its Linear's inputs to sums[name], tokens to counts."""
    def pre(_mod, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        sums[name] = sums.get(name, 0) + (x * x).sum(0)
        counts[name] = counts.get(name, 0) + x.shape[0]
    return pre


def collect(model, windows: torch.Tensor) -> imatrix_file.IMatrix:
    """Run `windows` (n x seq_len token ids) through `model`, summing each block Linear's squared inputs."""
    n_layers = model.config.num_hidden_layers
    im = imatrix_file.IMatrix(chunk_count=len(windows), chunk_size=windows.shape[1])
    sums: dict[str, torch.Tensor] = {}
    hooks = []

    for hf_name, mod in model.model.layers.named_modules(prefix="model.layers"):
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_pre_hook(_summing(gguf_weight_name(hf_name, n_layers), sums, im.counts)))
    try:
        with torch.no_grad():
            for batch in windows.split(BATCH):
                model(input_ids=batch)
    finally:
        for h in hooks:
            h.remove()
    im.sums = {n: s.numpy().astype(np.float32) for n, s in sums.items()}
    return im


def collect_streamed(hf_dir: Path, windows: torch.Tensor) -> imatrix_file.IMatrix:
    """collect's sums, with the checkpoint read one decoder layer at a time (streaming/stream.py)."""
    im = imatrix_file.IMatrix(chunk_count=len(windows), chunk_size=windows.shape[1])
    sums: dict[str, torch.Tensor] = {}
    n_layers = json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"]

    def hook(idx: int, layer) -> list:
        return [mod.register_forward_pre_hook(_summing(gguf_weight_name(name, n_layers), sums, im.counts))
                for name, mod in layer.named_modules(prefix=f"model.layers.{idx}")
                if isinstance(mod, torch.nn.Linear)]

    stream_layers(hf_dir, windows, hooked(hook), BATCH)
    im.sums = {n: s.numpy().astype(np.float32) for n, s in sums.items()}
    return im


def imatrix_step(store: StepStore, hf_dir: Path, hf_hash: str, cal: Calibration, stream: bool = False) -> Path:
    """The imatrix file of the checkpoint `hf_dir` on calibration `cal`, cached as a step. `stream`:
    read one layer at a time instead of loading the model (same sums; not part of the key)."""

    def build(out: Path) -> dict:
        if stream:
            from transformers import AutoTokenizer

            windows = calibration_windows(AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=False), cal)
            im = collect_streamed(hf_dir, windows)
        else:
            model, tok = load_model(hf_dir)
            windows = calibration_windows(tok, cal)
            im = collect(model, windows)
        im.datasets = [str(cal.path) if cal.path else "edgeprune C4 sample"]
        imatrix_file.write(out / FILE, im)
        return {"entries": len(im.sums), "chunks": im.chunk_count, "chunk_size": im.chunk_size,
                "tokens": int(windows.numel())}

    res = store.run("imatrix", {"model": hf_hash, "calibration": cal.model_dump(mode="json")}, build)
    return res.path / FILE
