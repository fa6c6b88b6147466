"""How a benchmark number was measured. bench.json, report.md and the model card all take their
label from here, so none of them can print a speed without its threads, its machine, whether the
cache was evicted before each timed step, whether it was paired with the baseline, and the
--allow-foreign-arch label when the local runner measured another architecture than the target's."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class HowMeasured:
    runner: str
    measured: bool          # False: the fake runner's synthetic numbers
    cpu_model: str | None
    arch: str | None
    threads: int | None
    evict_mb: int           # memory read before each timed step (device.evict_llc_mb); 0: warm cache
    paired: bool            # measured interleaved with the baseline in one process (bench_worker.run_paired)
    foreign_arch: str | None  # "measured on x86_64 host, not on the target (aarch64)"

    @classmethod
    def of(cls, bench: dict) -> "HowMeasured":
        host = bench.get("host") or {}
        return cls(runner=bench.get("runner") or "?", measured=bool(bench.get("measured", True)),
                   cpu_model=host.get("cpu_model"), arch=host.get("arch"), threads=bench.get("n_threads"),
                   evict_mb=int(bench.get("evict_mb") or 0), paired=bool(bench.get("paired")),
                   foreign_arch=bench.get("foreign_arch"))

    @property
    def eviction(self) -> str:
        if self.evict_mb:
            return f"cache evicted ({self.evict_mb} MB read before each timed step)"
        return "cache not evicted (warm, as llama-bench)"

    @property
    def pairing(self) -> str:
        return "paired with the baseline" if self.paired else "unpaired"

    def machine(self, pairing: bool = False) -> str:
        """What measured; without the pairing (`pairing` False), the same for every row of one run."""
        if not self.measured:
            return f"NOT measured: synthetic numbers of the {self.runner} runner"
        parts = [f"measured by the {self.runner} runner on {self.cpu_model or 'unknown CPU'} "
                 f"({self.arch or 'unknown arch'})", f"{self.threads} threads", self.eviction]
        parts += [self.pairing] if pairing else []
        return ", ".join(parts) + (f"; {self.foreign_arch}" if self.foreign_arch else "")

    def text(self) -> str:
        return self.machine(pairing=True)

    def record(self) -> dict:
        """bench.json's fields (llama-bench's `cpu_info`/`n_threads` stay where llama-bench puts them)."""
        d = asdict(self)
        return {"runner": d["runner"], "measured": d["measured"], "arch": d["arch"], "evict_mb": d["evict_mb"],
                "cache_evicted": bool(d["evict_mb"]), "paired": d["paired"], "foreign_arch": d["foreign_arch"],
                "how_measured": self.text()}
