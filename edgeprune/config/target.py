"""Device profiles and budgets (targets/*.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Device(Strict):
    description: str = ""
    arch: Literal["x86_64", "aarch64", "any"] = "any"
    threads: PositiveInt | None = None  # None: all cores of the machine that benchmarks
    ram_gb: PositiveFloat
    mem_bandwidth_gbs: PositiveFloat
    runner: Literal["local", "fake", "ssh"] = "local"
    ssh_host: str | None = None


class Budget(Strict):
    prompt_tokens: PositiveInt = 64
    answer_tokens: PositiveInt = 100
    latency_s: PositiveFloat | None = None
    decode_tps: PositiveFloat | None = None
    max_ram_gb: PositiveFloat | None = None
    max_file_gb: PositiveFloat | None = None
    max_ppl_ratio: float = 1.5

    @model_validator(mode="after")
    def _check(self) -> "Budget":
        if self.max_ppl_ratio < 1.0:
            raise ValueError(f"max_ppl_ratio must be >= 1.0 (a ratio to the unpruned model), got {self.max_ppl_ratio}")
        return self


class Target(Strict):
    version: Literal[1] = 1
    name: str
    device: Device
    budget: Budget
