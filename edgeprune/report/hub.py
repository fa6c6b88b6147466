"""`edgeprune publish`: a Hub-ready folder (GGUF, README card, manifest, plots), pushed with huggingface_hub."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgeprune.errors import ConfigError, DataError, ToolchainError
from edgeprune.report.build import build_report, load_manifest
from edgeprune.atomic import atomic_copy

FILES = ("README.md", "manifest.json", "report.md", "report.html", "bench.json")


def _artifact(run_dir: Path, manifest: dict) -> Path:
    name = manifest["result"].get("artifact")
    if not name or not (run_dir / name).is_file():
        raise DataError("the run delivered no GGUF (budget not met), so there is nothing to publish",
                        where=str(run_dir), fix="relax the budget or rerun `edgeprune plan` until it is met")
    return run_dir / name


def assemble(run_dir: Path, out_dir: Path) -> Path:
    """Copy the delivered GGUF and the run's documents into out_dir (the run dir itself is fine)."""
    manifest = load_manifest(run_dir)
    gguf = _artifact(run_dir, manifest)
    build_report(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != run_dir.resolve():
        for name in (gguf.name, *FILES):
            if (run_dir / name).is_file():
                atomic_copy(run_dir / name, out_dir / name)
        if (run_dir / "plots").is_dir():
            shutil.copytree(run_dir / "plots", out_dir / "plots", dirs_exist_ok=True)
    return out_dir


def _token() -> str:
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise ConfigError("no Hugging Face token", where="publish",
                          fix="run `huggingface-cli login` or set HF_TOKEN, then rerun publish")
    return token


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload the folder; fails with one line when there is no token or no network."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ToolchainError("HF_HUB_OFFLINE=1 forbids uploads", where="publish",
                             fix="unset HF_HUB_OFFLINE on a machine with network access")
    token = _token()
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                   commit_message="edgeprune publish", allow_patterns=["*.gguf", *FILES, "plots/*"])
    except Exception as exc:  # network errors come as many requests/httpx/hub types; all mean "not pushed"
        raise ToolchainError(f"upload failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
                             where=f"hub:{repo_id}", fix="check the network, the token's write access and the "
                             "repo id; the assembled folder is kept") from None
    return f"pushed to https://huggingface.co/{repo_id} ({getattr(commit, 'oid', commit)})"
