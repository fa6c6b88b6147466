"""The first run on a fresh machine: a real `edgeprune plan` (local runner, llama.cpp export and
benchmark, perplexity on the shipped WikiText-2) from a clean copy of the repository, with no data
folder beside it, no EDGEPRUNE_DATA and empty cache and store folders. Only what `make install`
put on the machine is used (the packages and llama.cpp's converter).

Default tier: a tiny model built in code, the `quick` recipe and the `host` target's relative budget
loosened to 0.97 (four layers; a random model's perplexity ratios are meaningless, so no quality floor). Slow tier: the
README's own command on SmolLM2, `edgeprune plan --target host`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUSY = 3  # MachineBusyError's exit code: every benchmark try ran on an oversubscribed machine


def clean_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (tracked + new, not ignored): no runs/, no
    caches, and no shared/ folder beside it."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def fresh_env(tmp: Path, repo: Path) -> dict:
    from edgeprune.toolchain.converter import converter_dir

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPRUNE_")}
    return env | {"PYTHONPATH": str(repo), "HOME": str(tmp / "home"), "EDGEPRUNE_CACHE": str(tmp / "cache"),
                  "EDGEPRUNE_STORE": str(tmp / "store"), "EDGEPRUNE_LLAMA_CPP_DIR": str(converter_dir()),
                  "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def edgeprune(repo: Path, env: dict, *args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def fresh(tmp_path):
    repo = clean_copy(tmp_path / "clone" / "edgeprune")
    assert not (repo.parent / "shared").exists() and not (repo / "runs").exists()
    env = fresh_env(tmp_path, repo)
    where = subprocess.run([sys.executable, "-c", "import edgeprune; print(edgeprune.__file__)"], cwd=repo,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(repo), where  # the copy runs, not the checkout
    return repo, env


def check_published(out: Path, stdout: str) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    base, final = m["iterations"][0], m["iterations"][m["result"]["iteration"]]
    assert m["result"]["met"] and final["k"] >= 1 and final["quant"] == "Q4_K_M"
    gguf = out / m["result"]["artifact"]
    assert gguf.is_file() and gguf.name.endswith(".Q4_K_M.gguf") and gguf.stat().st_size == final["gguf_bytes"]
    # real numbers: measured on this machine by the local runner, perplexity on the shipped WikiText-2
    for it in (base, final):
        assert it["bench"]["measured"] and it["measured_where"]["runner"] == "local"
        assert it["bench"]["tg_tps"]["median"] > 0 and it["ppl"]["ppl"] > 1 and it["ppl"]["tokens_scored"] > 0
    assert final["bench"]["paired"] and final["latency_at_level_s"] <= m["budget"]["latency_s"]
    assert final["verify"]["hf_vs_f16"]["cos_min"] >= 0.995
    # the summary a person reads, and nothing from other libraries' progress bars
    assert f"removed:  {final['k']} of {base['layers']} layers" in stdout
    assert "speed:    x" in stdout and "quality:  WikiText-2 perplexity" in stdout
    assert f"GGUF:     {out}/{gguf.name}" in stdout
    assert "Converting and de-quantizing" not in stdout
    return m


def run_or_skip_busy(res: subprocess.CompletedProcess) -> None:
    if res.returncode == BUSY:
        pytest.skip(f"machine oversubscribed, the run refused to measure: {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_first_run_from_a_clean_copy_publishes_a_pruned_q4_k_m(fresh, tokenizer_dir, tmp_path):
    from conftest import build_tiny

    repo, env = fresh
    # wider layers and tied embeddings (as in test_planner_stages): a layer is ~7 % of the file, so removing
    # one or two of the 4 is a speed-up the local runner can see
    model = build_tiny(tmp_path / "model", tokenizer_dir, hidden_size=256, intermediate_size=2048, head_dim=64,
                       tie_word_embeddings=True)
    recipe = tmp_path / "ci.yaml"  # the shipped quick recipe, waiting less long for a busy machine
    recipe.write_text((repo / "recipes" / "quick.yaml").read_text().replace(
        "  warmup: 1\n", "  warmup: 1\n  busy_retakes: 2\n  busy_wait_s: 20\n"))
    out = tmp_path / "run"
    res = edgeprune(repo, env, "plan", "--target", "host", "--model", str(model), "--recipe", str(recipe),
                    "--latency-fraction", "0.97", "--max-ppl-ratio", "1000", "--out", str(out), timeout=900)
    run_or_skip_busy(res)
    m = check_published(out, res.stdout)
    assert m["plan"]["recipe"]["calibration"]["path"] is None and m["plan"]["recipe"]["quality"]["path"] is None


def test_a_failed_run_leaves_no_run_folder(fresh, tmp_path):
    repo, env = fresh
    res = edgeprune(repo, env, "plan", "--target", "host", "--model", str(tmp_path / "missing"), timeout=600)
    assert res.returncode == 2 and "model path does not exist" in res.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))  # passes the magic check, fails while importing
    res = edgeprune(repo, env, "plan", "--target", "host", "--model", str(bad), timeout=600)
    assert res.returncode != 0
    assert not (repo / "runs").exists() or not any((repo / "runs").iterdir())


@pytest.mark.slow  # SmolLM2 and the default recipe: ~10 min on 2 idle cores
def test_readme_quick_start_on_smollm2(fresh):
    repo, env = fresh
    res = edgeprune(repo, env, "plan", "--target", "host", timeout=1800)
    run_or_skip_busy(res)
    runs = list((repo / "runs").iterdir())
    assert len(runs) == 1
    check_published(runs[0], res.stdout)
