"""Content-addressed step store: a step's output dir is named by the hash of what made it.

Outputs are built in a temp dir beside the final one and renamed into place, so a killed run
leaves no half-written step under its final name, and a rerun is a cache hit for every
finished step. Each step key has its own lock file, so two runs sharing a store never build
the same step at once: the second waits, then finds the first one's result.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeprune import __version__
from edgeprune.errors import ConfigError, DiskError
from edgeprune.paths import cache_dir
from edgeprune.store.disk import check_free_space
from edgeprune.faults import kill_point

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


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the package's own source. The version alone is not enough: a fixed method or stage
    must not be masked by a step cached before the fix (it happened: a rebuilt recovery was
    exported from a stale cached GGUF). The price is a cold cache after any code change."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def key_hash(key: dict) -> str:
    blob = json.dumps({"edgeprune": __version__, "code": code_fingerprint(), **key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def store_root(store: str | None = None) -> Path:
    """The step store's folder: --store, else $EDGEPRUNE_STORE, else ~/.cache/edgeprune/steps."""
    return Path(store or os.environ.get("EDGEPRUNE_STORE") or cache_dir() / "steps")


@dataclass
class StepResult:
    name: str
    path: Path
    hit: bool
    meta: dict
    seconds: float


class StepStore:
    def __init__(self, root: Path, force: bool = False, redo: set[str] | None = None,
                 echo: Callable[[str], None] | None = None, observer=None):
        """`observer`: an object with started(name) and finished(StepResult), told as each step builds
        or is found in the store (the console draws one line per step from it)."""
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"step store folder cannot be created ({exc.strerror or type(exc).__name__})",
                              where=str(self.root), fix="point --store (or EDGEPRUNE_STORE) at a writable folder") from None
        self.force = force
        self.redo = set(redo or ())
        self.echo = echo
        self.observer = observer
        self.log: list[dict] = []
        self._rebuilt: set[str] = set()  # forced steps rebuild once per run, not on every reuse
        self.swept = self._sweep_dead_temps()

    def _sweep_dead_temps(self) -> list[str]:
        """Temp dirs of killed runs, for steps this run may never rebuild. A live run holds the
        step's lock for as long as its temp dir exists, so a lock we can take means a dead owner."""
        swept = []
        for tmp in self.root.glob(".tmp-*"):
            final_name = tmp.name[len(".tmp-"):].rsplit("-", 1)[0]
            lock = self.root / ".locks" / f"{final_name}.lock"
            if not lock.is_file():  # no lock file: an older layout; left alone
                continue
            with open(lock, "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                shutil.rmtree(tmp, ignore_errors=True)
                swept.append(tmp.name)
                fcntl.flock(fh, fcntl.LOCK_UN)
        return swept

    def run(self, name: str, key: dict, build: Callable[[Path], dict | None],
            need_bytes: int | None = None) -> StepResult:
        """`need_bytes`: a generous estimate of what `build` writes, checked against free disk first."""
        digest = key_hash({"step": name, **key})
        final = self.root / f"{name}-{digest[:16]}"
        if self._reusable(name, final):
            return self._record(StepResult(name, final, True, self._meta(final), 0.0))
        with self._step_lock(final):
            if self._reusable(name, final):  # another run built it while we waited
                return self._record(StepResult(name, final, True, self._meta(final), 0.0))
            self._clear_stale(final)  # holding the lock: any temp dir of this key is a dead run's
            if need_bytes:
                check_free_space(self.root, need_bytes, f"step '{name}'")
            meta, seconds = self._build(name, key, build, final)
        self._rebuilt.add(final.name)
        return self._record(StepResult(name, final, False, meta, seconds))

    def _reusable(self, name: str, final: Path) -> bool:
        if not (final / "step.json").is_file():
            return False
        forced = self.force or name in self.redo
        return not forced or final.name in self._rebuilt

    @staticmethod
    def _meta(final: Path) -> dict:
        return json.loads((final / "step.json").read_text())["meta"]

    def _build(self, name: str, key: dict, build, final: Path) -> tuple[dict, float]:
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        tmp.mkdir(parents=True)
        if self.observer is not None:
            self.observer.started(name)
        t0 = time.perf_counter()
        try:
            meta = build(tmp) or {}
            seconds = time.perf_counter() - t0
            kill_point(name)  # test hook: die with the outputs written but not yet published
            (tmp / "step.json").write_text(json.dumps({"step": name, "key": key, "meta": meta,
                                                       "seconds": seconds}, indent=2, default=str))
            self._swap_in(tmp, final)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskError(f"disk full while building step '{name}'", where=str(self.root),
                                fix="free space or point --store at a larger disk; finished steps are kept") from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return meta, seconds

    def _swap_in(self, tmp: Path, final: Path) -> None:
        """Rename into place; a forced rebuild moves the old dir aside first (rename is atomic)."""
        old = None
        if final.exists():
            old = self.root / f".old-{final.name}-{os.getpid()}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _clear_stale(self, final: Path) -> None:
        for pattern in (f".tmp-{final.name}-*", f".old-{final.name}-*"):
            for stale in self.root.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)

    @contextmanager
    def _step_lock(self, final: Path):
        locks = self.root / ".locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{final.name}.lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._say(f"waiting for another run that is building {final.name}")
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _record(self, res: StepResult) -> StepResult:
        self.log.append({"step": res.name, "dir": res.path.name, "cache_hit": res.hit,
                         "seconds": round(res.seconds, 2)})
        if self.observer is not None:
            self.observer.finished(res)
        if res.hit:
            self._say(f"cache hit: {res.name} ({res.path.name})")
        else:
            self._say(f"built: {res.name} ({res.path.name}) in {res.seconds:.1f}s")
        return res

    def _say(self, line: str) -> None:
        if self.echo:
            self.echo(line)
