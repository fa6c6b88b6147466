"""Remove decoder layers from a safetensors checkpoint on disk, without loading the model.

The streamed `prune` path (commands/model.py) uses this so that scoring and surgery both stay at
one layer's memory: kept tensors are copied byte for byte from the source files (chunked), layer
indices renumbered, and config.json's num_hidden_layers / layer_types updated. The weights keep
their stored dtype; the result is the same checkpoint `remove_layers` + `save_model` writes for a
float32 source (tests/test_stream_wiring.py compares logits).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import BinaryIO, Callable

from edgeprune.surgery.layers import check_removal
from edgeprune.toolchain.checkpoint import OutTensor, read_safetensors_header, write_safetensors  # noqa: F401 (re-exported)

LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
CHUNK = 16 << 20  # bytes copied at a time: memory stays at this, whatever the tensor size


def layer_renames(names: list[str], remove: list[int], n_layers: int) -> dict[str, str]:
    """old tensor name -> new name for every kept tensor; layers after a removed one move down."""
    check_removal(n_layers, remove)
    drop = set(remove)
    new_index = {old: new for new, old in enumerate(i for i in range(n_layers) if i not in drop)}
    out = {}
    for name in names:
        m = LAYER_NAME.match(name)
        if m is None:
            out[name] = name
        elif int(m.group(1)) not in drop:
            out[name] = f"model.layers.{new_index[int(m.group(1))]}.{m.group(2)}"
    return out


def data_start(path: Path) -> int:
    with open(path, "rb") as fh:
        return 8 + struct.unpack("<Q", fh.read(8))[0]


def _copier(src: Path, start: int, lo: int, hi: int) -> Callable[[BinaryIO], int]:
    """emit for a tensor copied byte for byte from `src`, CHUNK bytes at a time."""
    def emit(dst: BinaryIO) -> int:
        with open(src, "rb") as fh:
            fh.seek(start + lo)
            left = hi - lo
            while left:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    break  # a short source: write_safetensors reports the missing bytes
                dst.write(chunk)
                left -= len(chunk)
        return hi - lo - left
    return emit


def copied_tensor(name: str, src: Path, entry: dict, start: int | None = None) -> OutTensor:
    """The OutTensor of `src`'s tensor with header `entry`, stored as `name`, bytes unchanged;
    `start`: where src's data section begins (data_start(src), passed by callers that cache it)."""
    lo, hi = entry["data_offsets"]
    start = data_start(src) if start is None else start
    return OutTensor(name, entry["dtype"], list(entry["shape"]), hi - lo, _copier(src, start, lo, hi))


def write_copied_tensors(out: Path, parts: list[tuple[str, Path, dict]]) -> int:
    """Write one safetensors file from (new name, source file, source header entry) triples,
    copying each tensor's bytes in CHUNK pieces. Returns the bytes written."""
    starts: dict[Path, int] = {}
    return write_safetensors(out, [copied_tensor(name, src, entry, starts.setdefault(src, data_start(src)))
                                   for name, src, entry in parts])


def remove_layers_on_disk(src: Path, dst: Path, remove: list[int], other_files: tuple[str, ...]) -> dict:
    """src: HF folder with safetensors; dst: empty folder. `other_files` (tokenizer, generation
    config) are copied as they are when present."""
    cfg = json.loads((src / "config.json").read_text())
    n = cfg["num_hidden_layers"]
    headers = {f: read_safetensors_header(f) for f in sorted(src.glob("*.safetensors"))}
    located = {name: (f, entry) for f, h in headers.items() for name, entry in h.items()}
    renames = layer_renames(sorted(located), remove, n)
    parts = [(new, *located[old]) for old, new in renames.items()]
    parts.sort(key=lambda p: p[0])
    written = write_copied_tensors(dst / "model.safetensors", parts)
    drop = set(remove)
    cfg["num_hidden_layers"] = n - len(drop)
    if cfg.get("layer_types"):
        cfg["layer_types"] = [t for i, t in enumerate(cfg["layer_types"]) if i not in drop]
    cfg["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    copy_side_files(src, dst, other_files)
    return {"layers_before": n, "layers_after": cfg["num_hidden_layers"], "bytes": written}


def copy_side_files(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    """Copy the non-weight files (tokenizer, generation config) present in `src`; config.json is
    rewritten by the caller and the shard index would name shards the output does not have."""
    for name in names:
        if name not in ("config.json", "model.safetensors.index.json") and (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
