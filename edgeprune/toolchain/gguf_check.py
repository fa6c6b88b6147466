"""GGUF structure gate: the header agrees with the model it came from, every block is whole,
and every tensor's bytes lie inside the file (a truncated copy fails here, not on a device).
Finiteness gate: a NaN or inf in a weight or in the logits fails the export naming where it is
(a NaN compares False with any limit, so a plain `cos < limit` gate let it through)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import ExportError, ToolchainError

_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
REQUIRED = ("token_embd.weight", "output_norm.weight")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    offset: int  # absolute byte offset of the data in the file
    n_bytes: int


def read_tensor_index(path: Path) -> tuple[list[TensorEntry], int]:
    """(tensors, file size) from the header, without touching the weights."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        entries = [TensorEntry(t.name, int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]
    except Exception as exc:  # gguf raises bare ValueError/IndexError on corrupt files
        raise ToolchainError(f"unreadable GGUF header ({type(exc).__name__})", where=str(path),
                             fix="the file is corrupt or truncated; re-export it") from None
    return entries, Path(path).stat().st_size


def structure_problems(tensors: list[TensorEntry], file_size: int, meta: dict, expect: dict) -> list[str]:
    """Pure check. `expect`: header keys (llama.block_count, ...) and optionally tensor_count."""
    problems = [f"{k} is {meta.get(k)}, expected {v}" for k, v in expect.items() if meta.get(k) != v
                and k != "tensor_count"]
    if "tensor_count" in expect and len(tensors) != expect["tensor_count"]:
        problems.append(f"{len(tensors)} tensors, expected {expect['tensor_count']}")
    names = {t.name for t in tensors}
    problems += [f"tensor {r} missing" for r in REQUIRED if r not in names]
    blocks: dict[int, set[str]] = {}
    for name in names:
        if m := _BLOCK.match(name):
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
    n_blocks = expect.get("llama.block_count", len(blocks))
    if sorted(blocks) != list(range(n_blocks)):
        problems.append(f"block indices {sorted(blocks)[:3]}..{sorted(blocks)[-3:]} are not 0..{n_blocks - 1}")
    shapes = {frozenset(v) for v in blocks.values()}
    if len(shapes) > 1:
        problems.append("blocks do not all have the same tensors")
    end = max((t.offset + t.n_bytes for t in tensors), default=0)
    if end > file_size:
        problems.append(f"tensor data ends at byte {end} but the file has {file_size} (truncated)")
    return problems


def check_gguf(path: Path, meta: dict, expect: dict) -> None:
    tensors, size = read_tensor_index(path)
    problems = structure_problems(tensors, size, meta, expect)
    if problems:
        raise ExportError("GGUF structure check failed: " + "; ".join(problems[:3]), where=str(path),
                          fix="re-export; if it persists, report a converter bug")


def first_nonfinite(named_arrays) -> tuple[str, int, int] | None:
    """(name, non-finite count, element count) of the first array with a NaN or inf, or None.
    `named_arrays`: (name, torch tensor or numpy array) pairs."""
    import numpy as np

    for name, arr in named_arrays:
        if hasattr(arr, "detach"):  # torch
            import torch

            bad = int((~torch.isfinite(arr.detach())).sum())
            total = arr.numel()
        else:
            bad = int((~np.isfinite(arr)).sum())
            total = arr.size
        if bad:
            return name, bad, total
    return None


def check_finite(named_arrays, where: str, what: str) -> None:
    """ExportError naming the first tensor (or logits row set) holding a NaN or inf."""
    hit = first_nonfinite(named_arrays)
    if hit:
        name, bad, total = hit
        raise ExportError(f"{what} {name} has {bad} non-finite values (NaN or inf) of {total}", where=where,
                          fix="the checkpoint is broken (diverged training or a bad conversion); export a "
                              "checkpoint whose weights are all finite")
