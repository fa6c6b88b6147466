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

from edgeprune.surgery.layers import check_removal
from edgeprune.toolchain.checkpoint import read_safetensors_header

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


def _data_start(path: Path) -> int:
    with open(path, "rb") as fh:
        return 8 + struct.unpack("<Q", fh.read(8))[0]


def write_copied_tensors(out: Path, parts: list[tuple[str, Path, dict]]) -> int:
    """Write one safetensors file from (new name, source file, source header entry) triples,
    copying each tensor's bytes in CHUNK pieces. Returns the bytes written."""
    header, offset = {}, 0
    for name, _src, entry in parts:
        size = entry["data_offsets"][1] - entry["data_offsets"][0]
        header[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
    starts: dict[Path, int] = {}
    with open(out, "wb") as dst:
        dst.write(struct.pack("<Q", len(raw)) + raw)
        for _name, src, entry in parts:
            start = starts.setdefault(src, _data_start(src))
            lo, hi = entry["data_offsets"]
            with open(src, "rb") as fh:
                fh.seek(start + lo)
                left = hi - lo
                while left:
                    chunk = fh.read(min(CHUNK, left))
                    dst.write(chunk)
                    left -= len(chunk)
    return 8 + len(raw) + offset


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
    for name in other_files:
        if name not in ("config.json", "model.safetensors.index.json") and (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return {"layers_before": n, "layers_after": cfg["num_hidden_layers"], "bytes": written}
