"""Device profiles and budgets (targets/*.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, NonNegativeInt, PositiveInt, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Device(Strict):
    description: str = ""
    arch: Literal["x86_64", "aarch64", "any"] = "any"
    threads: PositiveInt | None = None  # None: all cores of the machine that benchmarks
    ram_gb: PositiveFloat
    mem_bandwidth_gbs: PositiveFloat
    runner: Literal["local", "fake", "ssh"] = "local"
    ssh_host: str | None = None        # runner ssh: [user@]host
    ssh_port: PositiveInt = 22
    ssh_key: str | None = None         # identity file; None: the ssh agent / default keys
    ssh_python: str = "python3"        # interpreter on the remote with llama-cpp-python
    connect_timeout_s: PositiveInt = 10
    compute_gflops: PositiveFloat | None = None  # cost-model prior for prefill; None: from threads
    # MB read (untimed) before every decoded token and prefill, so the weights come from DRAM: for a host
    # whose last-level cache holds the model, which makes its speed follow other tenants' cache use
    # (devices/bench_worker.set_eviction). 0: measure as llama-bench does.
    evict_llc_mb: NonNegativeInt = 0

    @model_validator(mode="after")
    def _check_ssh(self) -> "Device":
        if self.runner == "ssh" and not self.ssh_host:
            raise ValueError("device.runner is 'ssh' but device.ssh_host is not set (write user@host)")
        return self


class Budget(Strict):
    prompt_tokens: PositiveInt = 64
    answer_tokens: PositiveInt = 100
    # Ten minutes bounds one prompt + answer; a larger number is almost surely milliseconds.
    latency_s: PositiveFloat | None = Field(None, le=600)
    # Latency as a fraction of the unpruned model's, measured on the device by the same run: checked on
    # speeds paired with that baseline, so a device whose speed drifts (a shared VM, a CI runner) is
    # judged on the model, not on its minute (planner/drift.py). Replaces latency_s once measured.
    latency_fraction: float | None = Field(None, gt=0, le=1)
    decode_tps: PositiveFloat | None = None
    max_ram_gb: PositiveFloat | None = None
    max_file_gb: PositiveFloat | None = None
    context_tokens: PositiveInt | None = None  # KV cache size for the RAM budget; None: prompt + answer
    max_ppl_ratio: float = Field(1.5, ge=1.0)  # a ratio to the unpruned model: below 1 is unmeetable

    @model_validator(mode="after")
    def _one_latency(self) -> "Budget":
        if self.latency_s is not None and self.latency_fraction is not None:
            raise ValueError("set latency_s (seconds) or latency_fraction (of the unpruned model's measured "
                             "latency), not both")
        return self


class Target(Strict):
    version: Literal[1] = 1
    name: str
    device: Device
    budget: Budget

    @model_validator(mode="after")
    def _check_fits_device(self) -> "Target":
        b, d = self.budget, self.device
        if b.max_ram_gb is not None and b.max_ram_gb > d.ram_gb:
            raise ValueError(f"budget.max_ram_gb ({b.max_ram_gb}) exceeds the device's RAM, device.ram_gb "
                             f"({d.ram_gb}); is it in MB? both are GB")
        if b.max_file_gb is not None and b.max_file_gb > d.ram_gb:
            raise ValueError(f"budget.max_file_gb ({b.max_file_gb}) exceeds device.ram_gb ({d.ram_gb}): "
                             "the model is read into RAM, so it cannot be larger than RAM")
        return self
