"""The one way edgeprune writes a file others may read: a hidden temp name in the same folder,
fsync, rename. A reader (or a rerun after a kill) sees the old file or the whole new one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgeprune.runner.faults import kill_point


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy to a hidden temp name, fsync, rename: `dst` is either absent or complete."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the rename must not reach the disk before the bytes do
        kill_point("publish")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def clear_stale_temps(folder: Path) -> list[Path]:
    """Hidden `.NAME.tmp-PID` files a killed run left; call only while holding the folder's lock."""
    stale = [p for p in folder.glob(".*.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
