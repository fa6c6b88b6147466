"""Fixtures: a tiny random Llama with GQA, built in code (no download), with SmolLM2's tokenizer
so llama.cpp's converter recognises it.

Tests run on a temporary cache ($EDGEPRUNE_CACHE, one per session) and never write into the real
one (~/.cache/edgeprune). What is slow to make is reused from the real cache without writing to it:
the converter `make install` unpacked is pointed at ($EDGEPRUNE_LLAMA_CPP_DIR), the extracted test
tokenizer is copied. With no unpacked converter the first export fails with "run `make converter`"
($EDGEPRUNE_OFFLINE) instead of running `pip download`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-5,
            tie_word_embeddings=False, initializer_range=0.1)


REAL_CACHE = Path(os.environ.get("EDGEPRUNE_CACHE") or Path.home() / ".cache" / "edgeprune")


def bench_module(name: str):
    """bench/<name>.py as a module (bench/ is not a package): its tables and helpers, for tests."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TOKENIZER = "test-tokenizer-smollm2"


@pytest.fixture(scope="session", autouse=True)
def temp_cache(tmp_path_factory) -> Path:
    """The session's $EDGEPRUNE_CACHE, set before any test asks paths.cache_dir()."""
    from edgeprune.toolchain.converter import bindings_version

    cache = tmp_path_factory.mktemp("edgeprune-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPRUNE_CACHE", str(cache))
    mp.setenv("EDGEPRUNE_OFFLINE", "1")
    unpacked = REAL_CACHE / f"llama.cpp-{bindings_version()}"
    if "EDGEPRUNE_LLAMA_CPP_DIR" not in os.environ and (unpacked / "convert_hf_to_gguf.py").is_file():
        mp.setenv("EDGEPRUNE_LLAMA_CPP_DIR", str(unpacked))
    yield cache
    mp.undo()


def extract_tokenizer(cache: Path) -> Path:
    """SmolLM2's tokenizer as a HF folder under `cache`, extracted from the default GGUF once."""
    from edgeprune.toolchain.hf import default_model_path

    target = cache / TOKENIZER
    if not (target / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        gguf = default_model_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


@pytest.fixture(scope="session")
def tokenizer_dir(temp_cache) -> Path:
    made = REAL_CACHE / TOKENIZER
    if (made / "tokenizer.json").is_file():  # copied, so no test can change the real cache's copy
        shutil.copytree(made, temp_cache / TOKENIZER)
        return temp_cache / TOKENIZER
    return extract_tokenizer(temp_cache)


def build_tiny(out: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from edgeprune.toolchain.hf import save_model

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      **{**TINY, **overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    save_model(model, tok, out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer_dir) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_llama):
    """The tiny Llama in fp32 eval mode and 16 calibration windows of 64 tokens (the first n windows
    of this stream are what Calibration(samples=n) gives: the stream is prefix-stable)."""
    from transformers import AutoTokenizer

    from edgeprune.config.recipe import Calibration
    from edgeprune.stages.calib import calibration_windows
    from edgeprune.toolchain.hf import load_model

    teacher, _ = load_model(tiny_llama)
    teacher.float().eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    return teacher, calibration_windows(tok, Calibration(samples=16, seq_len=64))


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("EDGEPRUNE_CALIBRATION", str(tmp_path / "calibration"))  # planner cost-model samples
    return tmp_path / "store"


@pytest.fixture
def small_calib(tmp_path) -> Path:
    """Short calibration file so scoring the tiny model takes well under a second."""
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(c4_lines(40)) + "\n", encoding="utf-8")
    return path


def c4_lines(n: int) -> list[str]:
    """The first `n` JSONL rows of the C4 sample shipped with the package (no data folder needed)."""
    import gzip

    from edgeprune.data.texts import CALIBRATION_FILE

    return gzip.decompress(CALIBRATION_FILE.read_bytes()).decode("utf-8").splitlines()[:n]
