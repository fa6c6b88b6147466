"""Memory per process of a recovery run, for recovery.json: peak resident set size, and the bytes
of model parameters this process holds (under FSDP its shards: the direct sign of sharding, which a
peak RSS that includes loading the whole checkpoint does not show)."""

from __future__ import annotations

import resource
import sys

MB = 1024 * 1024


def peak_rss_mb() -> float:
    """High-water RSS of this process: VmHWM on Linux (the mark reset_peak restarts), else ru_maxrss
    (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def reset_peak() -> bool:
    """Restart the high-water mark (Linux >= 4.0: writing 5 to clear_refs), so the next reading is
    the training's own peak; False where the kernel or a sandbox does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def param_mb(model) -> float:
    """Bytes of parameters stored in this process: a shard's local part, not the whole tensor."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total / MB


class Tracker:
    """Started once the model is loaded (and sharded); `gathered` at the end of training."""

    def __init__(self, model):
        self.params = param_mb(model)
        self.setup_peak = peak_rss_mb()  # loading, building data, sharding
        self.was_reset = reset_peak()

    def local(self) -> dict:
        train = peak_rss_mb()
        return {"rss_peak_mb": round(max(self.setup_peak, train), 1),
                "rss_train_peak_mb": round(train, 1) if self.was_reset else None,
                "param_mb": round(self.params, 1)}

    def gathered(self, acc) -> dict:
        """Every process's numbers, in process order (a collective: all processes call it)."""
        from accelerate.utils import gather_object

        rows = gather_object([self.local()]) if acc.num_processes > 1 else [self.local()]
        return {f"{k}_per_process": [r[k] for r in rows] for k in rows[0]}
