"""`edgeprune eval --protocol llama-perplexity` end to end on the tiny GGUF, its bad inputs, and (slow tier) the
same number from llama.cpp's own `llama-perplexity` tool built from the vendored sources."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REAL_CACHE, c4_lines
from llama_tools import build_tool, vendored_sources
from edgeprune.cli import main

CTX, CHUNKS = 16, 3


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    from edgeprune.toolchain.llamacpp import convert_hf_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny.F16.gguf"
    convert_hf_to_gguf(tiny_llama, out, "f16")
    return out


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(" ".join(json.loads(line)["text"] for line in c4_lines(3)), encoding="utf-8")
    return path


def eval_json(*args: str) -> dict:
    res = CliRunner().invoke(main, ["eval", "--threads", "1", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def hand_llama_ppl(gguf: Path, text: str, ctx: int, chunks: int) -> float:
    """The protocol written out longhand against llama-cpp-python: BOS-tokenized text, whole chunks, first token
    BOS when the vocab adds one, NLL of tokens first+1 .. ctx-1 from rows first .. ctx-2 (first = ctx // 2)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=ctx, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=True, special=False)
    nll, n = 0.0, 0
    for c in range(chunks):
        chunk = ids[c * ctx:(c + 1) * ctx]
        if llm._model.add_bos_token():
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        scores = np.array(llm.scores[:ctx], dtype=np.float64)
        for i in range(ctx // 2, ctx - 1):
            row = scores[i]
            nll += math.log(np.exp(row - row.max()).sum()) + row.max() - row[chunk[i + 1]]
            n += 1
    llm.close()
    return math.exp(nll / n)


def test_gguf_defaults_to_llama_protocol_and_matches_the_longhand_protocol(tiny_gguf, text_file):
    """Guards: the GGUF default left on the windows protocol, every token of a chunk scored (tokens_scored
    would be 3 x 15), BOS not added/replaced, the JSON not stating what was measured."""
    rec = eval_json("--model", str(tiny_gguf), "--text", str(text_file), "--ctx", str(CTX), "--chunks", str(CHUNKS))
    assert rec["protocol"] == "llama-perplexity"
    assert (rec["ctx"], rec["chunks"], rec["tokens_scored"]) == (CTX, CHUNKS, CHUNKS * 7)  # 16 - 1 - 8 per chunk
    assert rec["ppl"] == pytest.approx(hand_llama_ppl(tiny_gguf, text_file.read_text(), CTX, CHUNKS), rel=1e-6)
    assert rec["running_ppl"][-1] == pytest.approx(rec["ppl"], rel=1e-12) and len(rec["running_ppl"]) == CHUNKS
    assert rec["ppl"] > 1000 and rec["ppl_unc"] > 0  # random weights: near-uniform over the 49k vocabulary
    old = eval_json("--model", str(tiny_gguf), "--text", str(text_file), "--ctx", str(CTX), "--chunks", str(CHUNKS),
                    "--protocol", "windows")
    assert old["protocol"] == "windows" and old["tokens_scored"] == CHUNKS * 15


def test_kld_against_the_hf_parent(tiny_gguf, tiny_llama, text_file):
    """F16 GGUF vs its fp32 HF parent on the same chunks: tiny but non-zero KLD, the parent's ppl as the HF model
    scores those chunks (to the 16-bit coding of base log-probs), the model's ppl as without --parent.
    Guards: parent and model fed different tokens, KL's direction or the coding dropped (kld_mean ~0 or large),
    percentiles out of order."""
    import torch

    args = ["--model", str(tiny_gguf), "--text", str(text_file), "--ctx", str(CTX), "--chunks", str(CHUNKS)]
    alone = eval_json(*args)
    rec = eval_json(*args, "--parent", str(tiny_llama))["ppl"]  # with --parent the terminal shows the whole record
    assert rec["protocol"] == "llama-perplexity" and rec["positions"] == rec["tokens_scored"] == CHUNKS * 7
    assert rec["ppl"] == pytest.approx(alone["ppl"], rel=1e-9)
    assert 0 < rec["kld_mean"] < 1e-3 and rec["same_top"] > 0.9 and rec["top1_agree"] == rec["same_top"]
    assert rec["kld_min"] <= rec["kld_median"] <= rec["kld_p90"] <= rec["kld_p99"] <= rec["kld_max"]

    from transformers import AutoModelForCausalLM
    from llama_cpp import Llama

    llm = Llama(model_path=str(tiny_gguf), n_ctx=CTX, verbose=False, vocab_only=True)
    ids = llm.tokenize(text_file.read_text().encode(), add_bos=True, special=False)
    bos = llm.token_bos() if llm._model.add_bos_token() else None
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    nll = []
    for c in range(CHUNKS):
        chunk = ids[c * CTX:(c + 1) * CTX]
        chunk[0] = chunk[0] if bos is None else bos
        with torch.no_grad():
            logp = model(torch.tensor([chunk])).logits[0].double().log_softmax(-1)
        nll += [-float(logp[i, chunk[i + 1]]) for i in range(CTX // 2, CTX - 1)]
    assert rec["parent_ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-3)


@pytest.mark.parametrize("extra, expected", [
    (["--protocol", "llama-perplex"], "--protocol: unknown perplexity protocol 'llama-perplex' — fix: did you mean "
                                      "'llama-perplexity'?"),
    (["--ctx", "2"], "--ctx: llama-perplexity scores the second half of each chunk"),
    (["--ctx", "512"], "evaluation text: evaluation text has"),
])
def test_bad_inputs_answer_one_line(tiny_gguf, text_file, extra, expected):
    """Exit 2 and one line on stderr. Guards: a typo'd protocol reaching a KeyError, ctx = 2 dividing by zero
    (no token scored per chunk), a text shorter than two chunks scoring nothing (llama.cpp's own minimum)."""
    res = CliRunner().invoke(main, ["eval", "--model", str(tiny_gguf), "--text", str(text_file), "--threads", "1",
                                    *extra])
    err = [ln for ln in res.stderr.strip().splitlines() if "%|" not in ln]
    assert res.exit_code == 2 and len(err) == 1, res.stderr
    assert err[0].startswith("error: " + expected), err[0]
    if extra[-1] == "512":
        assert "needs at least 2 x ctx = 1024" in err[0]


# --- slow tier: llama.cpp's own tool --------------------------------------------------------------------------

@pytest.mark.slow  # first run builds llama-perplexity (~10 min on 2 cores, cached); then ~1 min
def test_agrees_with_llama_cpp_perplexity_tool(tmp_path):
    """edgeprune's llama-perplexity ppl on the default GGUF and WikiText-2's first 8 chunks of 512 equals
    llama.cpp's own tool's `Final estimate` within 0.5 %. Guards: any drift from the tool's protocol (BOS,
    chunking, the scored half): each moves SmolLM2's number by far more than 0.5 %."""
    if not shutil.which("cmake"):
        pytest.skip("cmake is not installed: cannot build llama.cpp's llama-perplexity")
    from edgeprune.data.texts import eval_text
    from edgeprune.toolchain.converter import bindings_version
    from edgeprune.toolchain.hf import default_model_path

    version = bindings_version()
    src = vendored_sources(version)
    if src is None:
        pytest.skip(f"no llama.cpp sources of llama-cpp-python {version} on disk: set EDGEPRUNE_LLAMA_CPP_SRC to a "
                    f"checkout, or put {f'llama_cpp_python-{version}.tar.gz'} in {REAL_CACHE}")
    exe = build_tool(src, version, "llama-perplexity")
    gguf, text = default_model_path(), tmp_path / "wiki.test.raw"
    text.write_text(eval_text(None), encoding="utf-8")
    threads = str(min(4, os.cpu_count() or 1))
    res = subprocess.run([str(exe), "-m", str(gguf), "-f", str(text), "-c", "512", "--chunks", "8", "-t", threads],
                         capture_output=True, text=True, timeout=1800)
    found = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", res.stdout + res.stderr)
    assert res.returncode == 0 and found, (res.stdout + res.stderr)[-2000:]
    ours = eval_json("--model", str(gguf), "--text", str(text), "--ctx", "512", "--chunks", "8")
    theirs = float(found.group(1))
    print(f"llama-perplexity {theirs:.4f} +/- {found.group(2)}; edgeprune {ours['ppl']:.4f} +/- {ours['ppl_unc']:.4f}")
    assert ours["ppl"] == pytest.approx(theirs, rel=0.005)
    assert ours["ppl_unc"] == pytest.approx(float(found.group(2)), rel=0.05)
