"""`edgeprune synth`: a random-weight checkpoint of a named Llama shape (toolchain/synth.py), with
the default model's tokenizer, published atomically: a temp folder beside --out, renamed into
place only when every shard is whole."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from edgeprune.errors import ConfigError
from edgeprune.store.disk import check_free_space, check_writable_dir
from edgeprune.toolchain import synth
from edgeprune.toolchain.hf import default_model_path


def default_tokenizer():
    from transformers import AutoTokenizer

    gguf = default_model_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def synth_command(shape_name: str, out: Path, seed: int = 0, max_shard: int = synth.SHARD_BYTES) -> dict:
    shape = synth.get_shape(shape_name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; synth never overwrites", where="--out",
                          fix="give a new folder name")
    check_writable_dir(out.parent, "--out")
    tok = default_tokenizer()
    vocab = len(tok)
    need = 2 * sum(math.prod(s) for _, s in synth.tensor_shapes(shape, vocab))
    check_free_space(out.parent, need, f"the {shape_name} checkpoint")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".synth-"))
    try:
        start = time.perf_counter()
        info = synth.write_checkpoint(shape, vocab, tmp, seed, max_shard)
        cfg = shape.config(vocab, tok.bos_token_id, tok.eos_token_id)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tok.save_pretrained(tmp)
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"shape": shape_name, "hub_shape": shape.hub_name, "seed": seed, "vocab_size": vocab,
            "vocab_note": "the default model's tokenizer: embedding and head rows are 49,152, not 128,256",
            **info, "seconds": round(time.perf_counter() - start, 1), "out": str(out)}
