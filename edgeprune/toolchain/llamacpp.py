"""llama.cpp via its converter, its quantizer and llama-cpp-python."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeprune import quants
from edgeprune.errors import ExportError, ToolchainError
from edgeprune.toolchain.converter import converter_dir

def convert_hf_to_gguf(hf_dir: Path, out: Path, outtype: str = "f16") -> None:
    script = converter_dir() / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(out), "--outtype", outtype]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not out.is_file():
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        raise ExportError(f"convert_hf_to_gguf failed: {last}", where=str(hf_dir),
                          fix="check the checkpoint loads with from_pretrained")


def quantize(src: Path, dst: Path, qtype: str, threads: int | None = None,
             imatrix: dict[str, np.ndarray] | None = None, types: dict[str, str] | None = None,
             meta: dict[str, str | int] | None = None) -> None:
    """llama_model_quantize to a registered quant type (edgeprune/quants.py); the file type's number
    is gguf's LlamaFileType, which is llama.cpp's llama_ftype.

    imatrix: GGUF weight name -> mean squared input per column (toolchain/imatrix_file.py), handed to
             the quantizer as llama-quantize --imatrix does.
    types:   GGUF weight name -> ggml type name, each an exact-name tensor override (a mix).
    meta:    extra GGUF key/values written into the output (string or int)."""
    import llama_cpp

    spec = quants.usable(qtype, imatrix=imatrix is not None)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(spec.ftype)
    params.nthread = threads or os.cpu_count() or 1
    keep = []  # the ctypes buffers must outlive the call
    if imatrix:
        params.imatrix = keep_alive(keep, _imatrix_array(imatrix, keep))
    if types:
        params.tt_overrides = keep_alive(keep, _override_array(types))
    if meta:
        params.kv_overrides = keep_alive(keep, _kv_array(meta))
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ExportError(f"llama_model_quantize returned {rc}", where=str(src), fix="check the F16 GGUF is valid")


def keep_alive(keep: list, arr):
    keep.append(arr)
    return ctypes.cast(arr, ctypes.POINTER(arr._type_))


def _imatrix_array(imatrix: dict[str, np.ndarray], keep: list):
    import llama_cpp

    arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # zeroed: the last is the terminator
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        buf = np.ascontiguousarray(values, dtype=np.float32)
        keep.append(buf)
        arr[i].name = name.encode()
        arr[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = buf.size
    return arr


def _override_array(types: dict[str, str]):
    import re

    import llama_cpp
    from gguf import GGMLQuantizationType

    arr = (llama_cpp.llama_model_tensor_override * (len(types) + 1))()
    for i, (name, t) in enumerate(sorted(types.items())):
        arr[i].pattern = f"^{re.escape(name)}$".encode()
        arr[i].type = GGMLQuantizationType[t].value  # gguf's enum is ggml_type
    return arr


def _kv_array(meta: dict[str, str | int]):
    import llama_cpp

    arr = (llama_cpp.llama_model_kv_override * (len(meta) + 1))()  # an empty key ends the list
    for i, (key, value) in enumerate(meta.items()):
        arr[i].key = key.encode()[:127]
        if isinstance(value, int):
            arr[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            arr[i].value.val_i64 = value
        else:
            arr[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            arr[i].value.val_str = str(value).encode()[:127]
    return arr


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs to fd 2 from C; silence it unless EDGEPRUNE_VERBOSE is set."""
    if os.environ.get("EDGEPRUNE_VERBOSE"):
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def open_gguf(path: Path, n_ctx: int = 512, threads: int | None = None, logits_all: bool = False):
    from llama_cpp import Llama

    try:
        with quiet_stderr():
            # n_threads_batch too: it defaults to every core, and a multi-token decode then spins on
            # cores other processes hold (seconds per call on a loaded machine).
            return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                         n_threads_batch=threads or os.cpu_count(),
                         n_batch=min(n_ctx, 512), logits_all=logits_all, verbose=False, seed=0)
    except (ValueError, RuntimeError) as exc:
        raise ToolchainError(f"llama.cpp could not load the GGUF ({exc})", where=str(path),
                             fix="the file is corrupt or truncated; re-export it") from None


def gguf_logits(path: Path, tokens: list[int], threads: int | None = None) -> np.ndarray:
    """Logits (tokens x vocab) for every position of `tokens`."""
    llm = open_gguf(path, n_ctx=max(64, len(tokens) + 8), threads=threads, logits_all=True)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    return out


def gguf_metadata(path: Path) -> dict:
    """Header facts without loading weights (gguf-py reader); cached per file version, as
    parsing a 49k-token vocabulary takes seconds."""
    st = Path(path).stat()
    return dict(_gguf_metadata(str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=32)
def _gguf_metadata(path: str, _mtime_ns: int, _size: int) -> dict:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises bare ValueError/IndexError on corrupt files
        raise ToolchainError(f"unreadable GGUF header ({type(exc).__name__})", where=str(path),
                             fix="the file is corrupt or truncated; re-export it") from None
    fields = {}
    for key in ("general.architecture", "general.name", "general.file_type", "llama.block_count",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.embedding_length",
                "llama.feed_forward_length"):
        field = reader.fields.get(key)
        if field is not None:
            fields[key] = field.contents()
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        fields["vocab_size"] = len(tokens.data)
    fields["tensor_count"] = len(reader.tensors)
    return fields


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """GGUF tensor name -> its ggml type name, as written in the file."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def gguf_tensor_data(path: Path) -> dict[str, bytes]:
    """GGUF tensor name -> its stored bytes (for comparing two quantizations)."""
    from gguf import GGUFReader

    return {t.name: bytes(t.data.tobytes()) for t in GGUFReader(str(path)).tensors}


def gguf_tensor_type_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in gguf_tensor_types(path).values():
        counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items()))


def build_info() -> dict:
    import llama_cpp

    info = {"llama_cpp_python": llama_cpp.__version__}
    try:
        info["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    except Exception:  # older bindings: not fatal, just less provenance
        pass
    return info


def require_llama_cpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ToolchainError("llama-cpp-python is not installed", where="export",
                             fix='CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python') from None
