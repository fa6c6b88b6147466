"""Content-addressed step store: a step's output dir is named by the hash of what made it.

Outputs are built in a temp dir beside the final one and renamed into place, so a killed run
leaves no half-written step under its final name, and a rerun is a cache hit for every
finished step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeprune import __version__


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_hash(path: Path) -> str:
    path = Path(path)
    if path.is_file():
        return file_hash(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "step.json"):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_hash(f).encode())
    return h.hexdigest()


def key_hash(key: dict) -> str:
    blob = json.dumps({"edgeprune": __version__, **key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class StepResult:
    name: str
    path: Path
    hit: bool
    meta: dict
    seconds: float


class StepStore:
    def __init__(self, root: Path, force: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.log: list[dict] = []

    def run(self, name: str, key: dict, build: Callable[[Path], dict | None]) -> StepResult:
        digest = key_hash({"step": name, **key})
        final = self.root / f"{name}-{digest[:16]}"
        if final.is_dir() and (final / "step.json").is_file() and not self.force:
            meta = json.loads((final / "step.json").read_text())["meta"]
            return self._record(StepResult(name, final, True, meta, 0.0))
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            meta = build(tmp) or {}
            seconds = time.perf_counter() - t0
            (tmp / "step.json").write_text(json.dumps({"step": name, "key": key, "meta": meta,
                                                       "seconds": seconds}, indent=2, default=str))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._record(StepResult(name, final, False, meta, seconds))

    def _record(self, res: StepResult) -> StepResult:
        self.log.append({"step": res.name, "dir": res.path.name, "cache_hit": res.hit,
                         "seconds": round(res.seconds, 2)})
        return res
