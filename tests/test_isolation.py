"""Tests run on a temporary cache and never download: what conftest.temp_cache promises."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import REAL_CACHE


def test_every_cache_path_is_the_sessions_temporary_one(temp_cache, tokenizer_dir):
    """Mutant caught: conftest without its EDGEPRUNE_CACHE override (tests wrote the tokenizer,
    lm-eval tasks and an unpacked converter into the real ~/.cache/edgeprune)."""
    from edgeprune.paths import cache_dir
    from edgeprune.store.step_store import store_root
    from edgeprune.targets.calibration import calibration_path

    assert cache_dir() == temp_cache and not temp_cache.is_relative_to(REAL_CACHE)
    assert tokenizer_dir.is_relative_to(temp_cache) and (tokenizer_dir / "tokenizer.json").is_file()
    for path in (store_root(None), calibration_path("host", "local")):
        assert not Path(path).resolve().is_relative_to(REAL_CACHE.resolve()), path


def test_the_converter_is_the_unpacked_one_or_a_clear_error(temp_cache, monkeypatch):
    """With the real cache's converter, tests point at it; without it, the first export names
    `make converter` and never runs `pip download`. Mutant caught: fetch_converter without its
    EDGEPRUNE_OFFLINE check (the download starts: subprocess.run is called)."""
    from edgeprune.errors import ToolchainError
    from edgeprune.toolchain import converter

    found = converter.converter_dir()
    assert (found / "convert_hf_to_gguf.py").is_file() and not found.is_relative_to(temp_cache)

    def no_download(*args, **kwargs):
        raise AssertionError(f"a test ran {args[0]}")

    monkeypatch.delenv("EDGEPRUNE_LLAMA_CPP_DIR", raising=False)
    monkeypatch.setattr(subprocess, "run", no_download)
    with pytest.raises(ToolchainError, match="make converter"):
        converter.converter_dir()
    assert not any(temp_cache.glob("llama.cpp-*"))
