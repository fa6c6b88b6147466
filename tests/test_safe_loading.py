"""Safe loading: the import stage copies only code-free files; pickles need --allow-pickle."""

import shutil

import torch
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.store import StepStore
from edgeprune.stages.load import import_model
from edgeprune.toolchain.checkpoint import checkpoint_tensors
from edgeprune.toolchain.hf import load_model


def test_import_copies_only_code_free_files(tiny_llama, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(tiny_llama, src)
    (src / "modeling_evil.py").write_text("raise SystemExit('ran remote code')\n")
    (src / "notes.bin").write_bytes(b"\x80\x04pickle")
    hf_dir, digest = import_model(StepStore(tmp_path / "store"), src)
    names = sorted(p.name for p in hf_dir.iterdir())
    assert "modeling_evil.py" not in names and "notes.bin" not in names
    assert {"config.json", "model.safetensors", "tokenizer.json", "step.json"} <= set(names)
    assert (hf_dir / "model.safetensors").read_bytes() == (tiny_llama / "model.safetensors").read_bytes()
    assert hf_dir.parent == tmp_path / "store"  # later stages read the store copy, not the user's folder


def test_pickle_weights_load_only_with_allow_pickle(tiny_llama, tmp_path):
    model, tok = load_model(tiny_llama)
    src = tmp_path / "pickled"
    model.save_pretrained(src)  # transformers 5 writes safetensors only: swap in a pickle by hand
    (src / "model.safetensors").unlink()
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    tok.save_pretrained(src)
    assert not list(src.glob("*.safetensors")) and list(src.glob("*.bin"))
    args = ["plan", "--model", str(src), "--runner", "fake", "--out", str(tmp_path / "out"), "--dry-run"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "--allow-pickle" in refused.stderr
    allowed = CliRunner().invoke(main, args + ["--allow-pickle"])
    assert allowed.exit_code == 0, allowed.output
    # the import stage converts the pickle to safetensors once; every later stage reads that
    hf_dir, _ = import_model(StepStore(tmp_path / "store"), src, allow_pickle=True)
    assert not list(hf_dir.glob("*.bin"))
    tensors = checkpoint_tensors(hf_dir)
    assert tensors["model.embed_tokens.weight"]["shape"] == [model.config.vocab_size, 128]
    reloaded, _ = load_model(hf_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
