"""Safe checks on a HF checkpoint folder before anything loads it.

A safetensors file is an 8-byte little-endian header length, a JSON header that gives every
tensor's dtype, shape and byte range, then the data. Reading only the header tells whether the
file is whole (the last byte range must end exactly at the end of the file) and which tensors
exist, without loading weights or running any code.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from edgeprune.errors import ModelError

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit; a larger length means garbage


def read_safetensors_header(path: Path) -> dict:
    """{tensor name: {dtype, shape, data_offsets}}; raises ModelError if the file is not whole."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise _bad(path, f"file is {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise _bad(path, f"header length {n} does not fit in a {size}-byte file")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _bad(path, "header is not JSON") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + n + end != size:
        raise _bad(path, f"header describes {8 + n + end} bytes but the file has {size} (truncated or padded)")
    return tensors


def _bad(path: Path, what: str) -> ModelError:
    return ModelError(f"corrupt safetensors file: {what}", where=str(path),
                      fix="re-download or re-save the checkpoint (an interrupted copy leaves a short file)")


def checkpoint_tensors(folder: Path) -> dict:
    """All tensors of every *.safetensors shard in the folder."""
    out: dict = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(read_safetensors_header(f))
    return out


def parameter_count(tensors: dict) -> int:
    return sum(math.prod(v["shape"]) for v in tensors.values())


def check_config_consistency(cfg: dict, tensors: dict, where: str) -> None:
    """Facts the loader would otherwise paper over: transformers silently initialises a missing
    lm_head at random, and a head count that is not a multiple of the KV head count breaks GQA."""
    heads, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise ModelError(f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})",
                         where=where, fix="fix config.json: grouped-query attention needs heads % kv_heads == 0")
    tied = cfg.get("tie_word_embeddings", True)  # the transformers default for Llama configs
    if tensors and not tied and "lm_head.weight" not in tensors:
        raise ModelError("config.json says tie_word_embeddings: false but the weights have no lm_head.weight",
                         where=where, fix="set tie_word_embeddings: true if the output head shares the "
                         "embedding, else re-save the checkpoint with its lm_head")
    layers = cfg.get("num_hidden_layers")
    present = {int(k.split(".")[2]) for k in tensors if k.startswith("model.layers.")}
    if tensors and layers is not None and present != set(range(layers)):
        raise ModelError(f"config.json says {layers} layers but the weights hold layers "
                         f"{sorted(present)[:3]}..{sorted(present)[-3:]} ({len(present)} in all)",
                         where=where, fix="re-save the checkpoint so config and weights agree")
    if cfg.get("auto_map"):
        raise ModelError("config.json has auto_map: the model needs its own Python code to load", where=where,
                         fix="edgeprune never runs remote code; use a checkpoint of a supported architecture")


@dataclass(frozen=True)
class OutTensor:
    """One tensor of a safetensors file being written: its header entry (dtype, shape, byte count)
    is known before its data, which emit(dst) writes at dst's position and returns the bytes of."""
    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    emit: Callable[[BinaryIO], int]


def write_safetensors(out: Path, tensors: list[OutTensor]) -> int:
    """Write one safetensors file: the whole header first (every offset follows from the byte
    counts), then each tensor's data in order, so no tensor waits in memory for the others.
    Returns the bytes written; an emit that writes other than its nbytes is an error, not a
    silently shifted file."""
    header, offset = {}, 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
    with open(out, "wb") as dst:
        dst.write(struct.pack("<Q", len(raw)) + raw)
        for t in tensors:
            wrote = t.emit(dst)
            if wrote != t.nbytes:
                raise ModelError(f"{t.name}: wrote {wrote} bytes where the header says {t.nbytes}", where=str(out),
                                 fix="check the source safetensors are whole (re-download or re-save) and run again")
    return 8 + len(raw) + offset
