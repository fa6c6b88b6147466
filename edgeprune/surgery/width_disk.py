"""Remove attention heads / KV groups and MLP channels from a safetensors checkpoint on disk,
without loading the model (the streamed `prune --method heads|ffn`).

From a width decision ({"heads": kept query heads per layer, "ffn": kept MLP channels per layer},
either None) each layer keeps: q_proj rows of its kept heads, k/v rows of the KV groups those heads
read (GQA: head h reads group h // group_size), o_proj columns of its kept heads; gate/up rows and
down_proj columns of its kept channels; biases follow rows. Every other tensor is copied byte for
byte. A sliced tensor is read alone, in its stored dtype (bf16 stays bf16), sliced and written
before the next is read, so memory stays at about two copies of the largest sliced matrix.

The output is one model.safetensors, as remove_layers_on_disk writes: the header (every shape and
offset) follows from the decision before any data is read, transformers and llama.cpp's converter
read a single file of any size, and there is no shard index to keep in step with the shards.
For a float32 source the result equals keep_heads / keep_ffn_channels + save_model
(tests/test_width_stream.py compares logits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from edgeprune.errors import ConfigError, ModelError
from edgeprune.surgery.heads import _groups_kept, _rows
from edgeprune.surgery.layers_disk import (LAYER_NAME, OutTensor, copied_tensor, copy_side_files, data_start,
                                          write_safetensors)
from edgeprune.toolchain.checkpoint import DTYPE_BYTES, read_safetensors_header

WHERE = "width surgery"
Slice = tuple[int, torch.Tensor, int]  # (dim, kept indices, that dim's size before)


def _shape(cfg: dict) -> dict:
    n_heads = cfg["num_attention_heads"]
    return {"n_layers": cfg["num_hidden_layers"], "n_heads": n_heads,
            "n_kv": cfg.get("num_key_value_heads") or n_heads,
            "hd": cfg.get("head_dim") or cfg["hidden_size"] // n_heads, "inter": cfg["intermediate_size"]}


def _check_lists(what: str, lists: list[list[int]], n_layers: int, size: int) -> None:
    """One list per layer, of one common length, of distinct indices in 0..size-1."""
    if len(lists) != n_layers:
        raise ConfigError(f"{len(lists)} {what} lists for {n_layers} layers", where=WHERE,
                          fix="give one list per layer")
    if len({len(k) for k in lists}) != 1:
        raise ConfigError(f"{what} lists of different lengths {sorted({len(k) for k in lists})}", where=WHERE,
                          fix="keep the same number in every layer (llama configs have one shape)")
    for kept in lists:
        if not kept or min(kept) < 0 or max(kept) >= size or len(set(kept)) != len(kept):
            raise ConfigError(f"{what} indices {sorted(kept)[:8]}... are empty, repeated or outside 0..{size - 1}",
                              where=WHERE, fix="keep at least one valid index per layer, each once")


def head_slices(shape: dict, heads: list[int]) -> dict[str, Slice]:
    """One layer's attention slices (tensor name suffix -> slice) keeping query heads `heads`."""
    heads = sorted(heads)
    groups, _per = _groups_kept(heads, shape["n_heads"] // shape["n_kv"])
    q, kv = _rows(heads, shape["hd"]), _rows(groups, shape["hd"])
    nq, nkv = shape["n_heads"] * shape["hd"], shape["n_kv"] * shape["hd"]
    out = {f"self_attn.q_proj.{w}": (0, q, nq) for w in ("weight", "bias")}
    out.update({f"self_attn.{p}.{w}": (0, kv, nkv) for p in ("k_proj", "v_proj") for w in ("weight", "bias")})
    out["self_attn.o_proj.weight"] = (1, q, nq)  # o_proj reads the heads' outputs: its columns go
    return out


def ffn_slices(shape: dict, channels: list[int]) -> dict[str, Slice]:
    """One layer's MLP slices keeping `channels`: gate/up rows, down_proj columns."""
    idx, inter = torch.tensor(sorted(channels)), shape["inter"]
    out = {f"mlp.{p}.{w}": (0, idx, inter) for p in ("gate_proj", "up_proj") for w in ("weight", "bias")}
    out["mlp.down_proj.weight"] = (1, idx, inter)
    return out


def layer_slices(shape: dict, heads: list[int] | None, channels: list[int] | None) -> dict[str, Slice]:
    return {**(head_slices(shape, heads) if heads else {}), **(ffn_slices(shape, channels) if channels else {})}


def _slicer(src: Path, name: str, dim: int, index: torch.Tensor) -> Callable[[BinaryIO], int]:
    def emit(dst: BinaryIO) -> int:
        from safetensors import safe_open

        with safe_open(src, "pt") as fh:
            kept = fh.get_tensor(name).index_select(dim, index).contiguous()  # stored dtype kept
        data = kept.reshape(-1).view(torch.uint8).numpy()  # the raw little-endian bytes, no copy
        dst.write(data)
        return data.nbytes
    return emit


def sliced_tensor(name: str, src: Path, entry: dict, cut: Slice) -> OutTensor:
    dim, index, before = cut
    shape = list(entry["shape"])
    if len(shape) <= dim or shape[dim] != before:
        raise ModelError(f"{name} has shape {shape}; config.json implies {before} along dim {dim}", where=str(src),
                         fix="re-save the checkpoint so config.json and the weights agree")
    shape[dim] = len(index)
    nbytes = math.prod(shape) * DTYPE_BYTES[entry["dtype"]]
    return OutTensor(name, entry["dtype"], shape, nbytes, _slicer(src, name, dim, index))


def _new_shape(shape: dict, decision: dict) -> dict:
    """config.json's width fields after the decision (checked uniform across layers first)."""
    heads, ffn = decision.get("heads"), decision.get("ffn")
    n_heads, n_kv = shape["n_heads"], shape["n_kv"]
    if heads:
        _check_lists("query head", heads, shape["n_layers"], n_heads)
        kept = {(len(g), per) for g, per in (_groups_kept(sorted(h), n_heads // n_kv) for h in heads)}
        if len(kept) != 1:
            raise ConfigError(f"layers would get different head shapes {sorted(kept)}", where=WHERE,
                              fix="remove the same number of groups / heads per group in every layer")
        n_kv, per = kept.pop()
        n_heads = n_kv * per
    if ffn:
        _check_lists("MLP channel", ffn, shape["n_layers"], shape["inter"])
    return {"num_attention_heads": n_heads, "num_key_value_heads": n_kv, "head_dim": shape["hd"],
            "intermediate_size": len(ffn[0]) if ffn else shape["inter"]}


def _plan(located: dict[str, tuple[Path, dict]], shape: dict, decision: dict) -> list[OutTensor]:
    """Every output tensor, sorted by name: sliced where the decision cuts it, else copied."""
    heads, ffn = decision.get("heads"), decision.get("ffn")
    per_layer = [layer_slices(shape, heads[i] if heads else None, ffn[i] if ffn else None)
                 for i in range(shape["n_layers"])]
    starts: dict[Path, int] = {}
    out = []
    for name in sorted(located):
        src, entry = located[name]
        m = LAYER_NAME.match(name)
        cut = per_layer[int(m.group(1))].get(m.group(2)) if m and int(m.group(1)) < len(per_layer) else None
        if cut:
            out.append(sliced_tensor(name, src, entry, cut))
        else:
            out.append(copied_tensor(name, src, entry, starts.setdefault(src, data_start(src))))
    return out


def _layer_params(tensors: list[tuple[str, list[int]]]) -> int:
    return sum(math.prod(shape) for name, shape in tensors if LAYER_NAME.match(name))


def keep_width_on_disk(src: Path, dst: Path, decision: dict, other_files: tuple[str, ...]) -> dict:
    """src: HF folder with safetensors (one file or shards); dst: an empty folder. Writes
    dst/model.safetensors, config.json with the new head / KV / MLP widths and `other_files`
    (tokenizer, generation config) copied when present. Returns the new widths, the decoder
    layers' parameter counts before and after, and the bytes written."""
    cfg = json.loads((src / "config.json").read_text())
    shape = _shape(cfg)
    widths = _new_shape(shape, decision)
    located = {name: (f, entry) for f in sorted(src.glob("*.safetensors"))
               for name, entry in read_safetensors_header(f).items()}
    tensors = _plan(located, shape, decision)
    written = write_safetensors(dst / "model.safetensors", tensors)
    cfg.update(widths)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    copy_side_files(src, dst, other_files)
    return {**widths, "bytes": written,
            "layer_params_before": _layer_params([(n, e["shape"]) for n, (_f, e) in located.items()]),
            "layer_params_after": _layer_params([(t.name, t.shape) for t in tensors])}
