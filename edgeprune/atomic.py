"""The one way edgeprune writes a file others may read: a hidden temp name in the same folder,
fsync, rename. A reader (or a rerun after a kill) sees the old file or the whole new one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from edgeprune.faults import kill_point


def temp_name(path: Path) -> Path:
    """The hidden `.NAME.tmp-PID` beside `path` (clear_stale_temps finds the ones a kill left)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes the whole file to a temp path in `path`'s folder (a library's save_file or
    savefig, say); the temp file is fsynced and renamed onto `path`. On any error it is removed and
    `path` is left as it was."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the rename must not reach the disk before the bytes do
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy to a hidden temp name, fsync, rename: `dst` is either absent or complete."""
    def copy(tmp: Path) -> None:
        shutil.copyfile(src, tmp)
        kill_point("publish")  # the kill test's moment: the copy made, not yet renamed into place

    atomic_write(dst, copy)


def clear_stale_temps(folder: Path) -> list[Path]:
    """Hidden `.NAME.tmp-PID` files a killed run left; call only while holding the folder's lock."""
    stale = [p for p in folder.glob(".*.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
