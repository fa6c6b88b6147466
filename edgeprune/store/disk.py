"""Free-disk checks before writing, so a full disk stops a run before a half-written file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgeprune.errors import DiskError

MARGIN = 1.2  # estimates are from tensor sizes; headers, metadata and temp copies add a little


def free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(path: Path, need_bytes: int, what: str) -> None:
    need = int(need_bytes * MARGIN)
    free = free_bytes(path)
    if free < need:
        raise DiskError(f"not enough free disk for {what}: need ~{_mb(need)}, found {_mb(free)} free",
                        where=str(path), fix="free some space or choose a folder on a larger disk "
                        "(--store for steps, --out for results)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_writable_dir(folder: Path, where: str) -> None:
    """Create `folder` if needed and prove a file can be written there, before any work."""
    from edgeprune.errors import ConfigError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output folder is not writable ({exc.strerror or type(exc).__name__})", where=str(folder),
                          fix=f"choose another {where} or fix its permissions") from None
