"""Locate llama.cpp's own `convert_hf_to_gguf.py` (shipped in the llama-cpp-python sdist).

The wheel does not carry the converter, so `make install` (or the first export) unpacks
`convert_hf_to_gguf.py`, `conversion/` and `gguf-py/` of the *same* llama.cpp version as the
installed bindings into the cache. We never hand-roll tensor naming.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edgeprune.errors import ToolchainError
from edgeprune.paths import cache_dir

_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def bindings_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def converter_dir() -> Path:
    env = os.environ.get("EDGEPRUNE_LLAMA_CPP_DIR")
    if env:
        d = Path(env)
        if not (d / "convert_hf_to_gguf.py").is_file():
            raise ToolchainError("convert_hf_to_gguf.py not found", where=f"EDGEPRUNE_LLAMA_CPP_DIR={d}",
                                 fix="point it at a llama.cpp checkout, or unset it")
        return d
    d = cache_dir() / f"llama.cpp-{bindings_version()}"
    if not (d / "convert_hf_to_gguf.py").is_file():
        fetch_converter(d)
    return d


def fetch_converter(dest: Path) -> None:
    ver = bindings_version()
    if os.environ.get("EDGEPRUNE_OFFLINE"):  # the tests set it: no test may reach PyPI
        raise ToolchainError(f"llama.cpp's converter is not unpacked and EDGEPRUNE_OFFLINE forbids downloading "
                             f"the llama-cpp-python {ver} sdist", where=str(dest),
                             fix="run `make converter` once (it unpacks into ~/.cache/edgeprune), "
                             "or set EDGEPRUNE_LLAMA_CPP_DIR to a llama.cpp checkout")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={ver}", "-d", tmp, "-q"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if res.returncode != 0 or not sdists:
            raise ToolchainError(f"could not download the llama-cpp-python {ver} sdist for its converter",
                                 where="pip download", fix="run `make converter` with network access to PyPI, "
                                 "or set EDGEPRUNE_LLAMA_CPP_DIR to a llama.cpp checkout")
        _extract(sdists[0], dest)


def _extract(sdist: Path, dest: Path) -> None:
    staging = Path(tempfile.mkdtemp(dir=dest.parent if dest.parent.exists() else None))
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            parts = m.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and parts[1].startswith(_MEMBERS) and (m.isfile() or m.isdir()):
                m.name = parts[1]
                tar.extract(m, staging, filter="data")
    staging.rename(dest)  # atomic: a half-unpacked converter is never visible


if __name__ == "__main__":  # `make install` runs this so the first export needs no network
    print(converter_dir())
