"""llama.cpp's importance-matrix file (GGUF flavour, as tools/imatrix writes and llama-quantize reads).

Layout (llama.cpp tools/imatrix/imatrix.cpp `save_imatrix`, common/imatrix-loader.cpp):
  * key/values: general.type = "imatrix", imatrix.datasets (strings), imatrix.chunk_count and
    imatrix.chunk_size (u32);
  * per weight matrix NAME (a GGUF tensor name such as blk.3.ffn_down.weight): NAME.in_sum2, F32
    ne = (row length, 1), the sum over tokens of each input column's squared activation, and
    NAME.counts, F32 ne = (1, 1), the number of tokens summed.

llama-quantize divides in_sum2 by counts; `importance` below does the same, so the values handed to
llama_model_quantize are what the tool would pass for this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune.atomic import atomic_write
from edgeprune.errors import ToolchainError

SUM2, COUNTS = ".in_sum2", ".counts"


@dataclass
class IMatrix:
    """Per weight matrix: sum of squared inputs per column, and how many tokens went in."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def importance(self) -> dict[str, np.ndarray]:
        """Mean squared activation per input column, float32: what the quantizer weighs errors by."""
        return {n: (s / max(self.counts[n], 1)).astype(np.float32) for n, s in self.sums.items()}


def write(path: Path, im: IMatrix) -> None:
    import gguf

    def writer(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), arch="imatrix")  # general.architecture is ignored by the loader
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", list(im.datasets))
        w.add_uint32("imatrix.chunk_count", im.chunk_count)
        w.add_uint32("imatrix.chunk_size", im.chunk_size)
        for name in sorted(im.sums):  # llama.cpp sorts too: a deterministic file
            w.add_tensor(name + SUM2, im.sums[name].astype(np.float32).reshape(1, -1))
            w.add_tensor(name + COUNTS, np.array([[im.counts[name]]], dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(path, writer)


def read(path: Path) -> IMatrix:
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise ToolchainError(f"not a GGUF imatrix file ({exc})", where=str(path),
                             fix="give a file written by edgeprune or llama.cpp's llama-imatrix") from None
    im = IMatrix()
    field_ = r.fields.get("general.type")
    if field_ is None or field_.contents() != "imatrix":
        raise ToolchainError("GGUF file is not an importance matrix (general.type != imatrix)",
                             where=str(path), fix="give a file written by edgeprune or llama.cpp's llama-imatrix")
    for key, attr in (("imatrix.chunk_count", "chunk_count"), ("imatrix.chunk_size", "chunk_size")):
        if key in r.fields:
            setattr(im, attr, int(r.fields[key].contents()))
    if "imatrix.datasets" in r.fields:
        im.datasets = list(r.fields["imatrix.datasets"].contents())
    for t in r.tensors:
        if t.name.endswith(SUM2):
            im.sums[t.name.removesuffix(SUM2)] = np.array(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(COUNTS):
            im.counts[t.name.removesuffix(COUNTS)] = int(round(float(np.asarray(t.data).reshape(-1)[0])))
    if not im.sums or set(im.sums) != set(im.counts):
        raise ToolchainError("imatrix file has no entries, or sums without counts", where=str(path),
                             fix="recompute it")
    return im
