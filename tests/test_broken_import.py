"""A model that fails its import leaves nothing in the step store (issue: broken imports stayed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeprune.errors import EdgepruneError, ModelError
from edgeprune.store import StepStore
from edgeprune.stages.load import import_model


def _copy(tiny_llama: Path, dest: Path) -> Path:
    shutil.copytree(tiny_llama, dest)
    return dest


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _index_names_a_missing_shard(m: Path) -> None:
    (m / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))


BREAKS = {
    "truncated safetensors": (lambda m: _truncate(m / "model.safetensors"), "not a whole safetensors file"),
    "config not json": (lambda m: (m / "config.json").write_text("{not json"), "not a transformers config"),
    "index names a missing shard": (_index_names_a_missing_shard, "model-00002-of-00002.safetensors"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_broken_checkpoint_is_refused_and_not_stored(tiny_llama, tmp_path, case):
    """Mutant caught: import_model copying the checkpoint without check_checkpoint (the truncated
    file was stored as a good import, and every later run reused it)."""
    model = _copy(tiny_llama, tmp_path / "model")
    breaks, message = BREAKS[case]
    breaks(model)
    store = StepStore(tmp_path / "store")
    with pytest.raises(ModelError, match=message):
        import_model(store, model)
    assert not [p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith(".locks")]
    # the repaired model imports, under its own hash
    shutil.rmtree(model)
    hf_dir, _ = import_model(store, _copy(tiny_llama, model))
    assert (hf_dir / "model.safetensors").is_file()


def test_a_truncated_gguf_is_not_stored(tmp_path):
    from edgeprune.toolchain.hf import default_model_path

    gguf = tmp_path / "broken.gguf"
    with open(default_model_path(), "rb") as src:
        gguf.write_bytes(src.read(4 << 20))  # the header and the first tensors only
    with pytest.raises(EdgepruneError):
        import_model(StepStore(tmp_path / "store"), gguf)
    assert not [p.name for p in (tmp_path / "store").iterdir() if not p.name.startswith(".locks")]
