"""llama.cpp's own tools, built from the sources vendored in the installed llama-cpp-python, for the
slow tests that compare edgeprune with them (llama-perplexity, llama-quantize)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

from conftest import REAL_CACHE


def vendored_sources(version: str) -> Path | None:
    """A llama.cpp source tree of the bindings' version: $EDGEPRUNE_LLAMA_CPP_SRC, the unpacked copy in the cache,
    or one unpacked there from a llama-cpp-python sdist of that version found in the cache or under /tmp."""
    env = os.environ.get("EDGEPRUNE_LLAMA_CPP_SRC")
    if env:
        return Path(env) if (Path(env) / "tools" / "perplexity").is_dir() else None
    dest = REAL_CACHE / f"llama.cpp-src-{version}"
    if (dest / "tools" / "perplexity" / "perplexity.cpp").is_file():
        return dest
    name = f"llama_cpp_python-{version}.tar.gz"
    sdists = [p for p in [REAL_CACHE / name, *Path("/tmp").glob(f"*/{name}")] if p.is_file()]
    if not sdists:
        return None
    staging = dest.with_name(dest.name + f".tmp{os.getpid()}")
    with tarfile.open(sdists[0]) as tar:
        members = []
        for m in tar.getmembers():
            head, sep, rest = m.name.partition("/vendor/llama.cpp/")
            if sep and rest and (m.isfile() or m.isdir()):
                m.name = rest
                members.append(m)
        tar.extractall(staging, members=members, filter="data")
    staging.rename(dest)
    return dest


def build_tool(src: Path, version: str, target: str) -> Path:
    """cmake build of one llama.cpp tool target (portable: GGML_NATIVE=OFF), cached per version; the
    first target builds ggml and libllama (~10 min on 2 cores), a later one only its own sources."""
    build = REAL_CACHE / f"llama.cpp-build-{version}"
    exe = build / "bin" / target
    if exe.is_file():
        return exe
    flags = ["-DGGML_NATIVE=OFF", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON",
             "-DBUILD_SHARED_LIBS=OFF"]
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *flags], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", target, "-j", str(os.cpu_count() or 2)],
                   check=True, capture_output=True)
    return exe
