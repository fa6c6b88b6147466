"""Device profiles and budgets (targets/*.yaml)."""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from pydantic import (Field, PositiveFloat, NonNegativeInt, PositiveInt, field_validator,
                      model_validator)

from edgeprune import registry
from edgeprune.config.strict import Strict
from edgeprune.errors import ConfigError

# A target name becomes a file name (the calibration cache, runs/<name>-<time>): one path component,
# no leading dot or dash.
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# ssh_host grammar: [user@]host[:port], host a name, an ssh config alias, an IPv4 address, or an IPv6
# address in brackets. Nothing may start with '-' (ssh would read it as an option: "-oProxyCommand=..."
# runs a local command) and no character outside these classes reaches ssh's argv.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
SSH_HOST = re.compile(rf"(?:(?P<user>{_NAME})@)?(?P<host>{_NAME}|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?")

# ssh's StrictHostKeyChecking. accept-new (the default) trusts a host's key the first time it is
# seen and refuses a changed one afterwards; yes refuses any host not already in known_hosts.
HostKeyPolicy = Literal["accept-new", "yes"]


class SshHost(NamedTuple):
    user: str | None
    host: str  # an IPv6 address without its brackets
    port: int | None

    def destination(self) -> str:
        """user@host for ssh's argv (after `--`)."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def scp_destination(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{path}" if self.user else f"{host}:{path}"


def parse_ssh_host(text: str) -> SshHost:
    """'user@host:2222' -> SshHost; ValueError with one line for anything else."""
    m = SSH_HOST.fullmatch(text or "")
    if not m:
        raise ValueError(f"ssh_host {text!r} is not [user@]host[:port] (letters, digits, '.', '_', '-'; "
                         "not starting with '-'; IPv6 in brackets)")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"ssh_host {text!r}: port {port} is outside 1-65535")
    return SshHost(m["user"], m["host"].strip("[]"), port)


def runner_spec(name: str):
    """The registered runner's spec; an unknown name is a ValueError pydantic reports at device.runner."""
    try:
        return registry.get("runner", name)
    except ConfigError as exc:
        raise ValueError(f"{exc.what} ({exc.fix})") from None


class Device(Strict):
    description: str = ""
    arch: Literal["x86_64", "aarch64", "any"] = "any"
    threads: PositiveInt | None = None  # None: all cores of the machine that benchmarks
    ram_gb: PositiveFloat
    mem_bandwidth_gbs: PositiveFloat
    runner: str = "local"              # a registered runner (devices/runners.py): local, fake, ssh
    ssh_host: str | None = None        # a remote runner's [user@]host[:port] or ssh config alias (parse_ssh_host)
    ssh_port: PositiveInt = 22
    ssh_host_key: HostKeyPolicy = "accept-new"  # ssh StrictHostKeyChecking; stated in every ssh measurement
    ssh_key: str | None = None         # identity file; None: the ssh agent / default keys
    ssh_python: str = "python3"        # interpreter on the remote with llama-cpp-python
    connect_timeout_s: PositiveInt = 10
    compute_gflops: PositiveFloat | None = None  # cost-model prior for prefill; None: from threads
    # The CPU features that decide which weights llama.cpp repacks at load, a second copy in RAM
    # (targets/repack.py). None: avx2 for x86_64, dotprod for aarch64, this machine's for arch any.
    cpu_features: list[Literal["avx2", "avx512", "dotprod", "i8mm"]] | None = None
    # MB read (untimed) before every decoded token and prefill, so the weights come from DRAM: for a host
    # whose last-level cache holds the model, which makes its speed follow other tenants' cache use
    # (devices/bench_worker.set_eviction). 0: measure as llama-bench does.
    evict_llc_mb: NonNegativeInt = 0
    # A local runner refuses a target whose arch is not this machine's; true (--allow-foreign-arch)
    # measures here anyway and labels every number "measured on <arch> host, not on the target".
    allow_foreign_arch: bool = False

    @field_validator("runner")
    @classmethod
    def _registered_runner(cls, v: str) -> str:
        runner_spec(v)
        return v

    @field_validator("ssh_host")
    @classmethod
    def _ssh_host_grammar(cls, v: str | None) -> str | None:
        if v is not None:
            parse_ssh_host(v)
        return v

    @model_validator(mode="after")
    def _check_ssh(self) -> "Device":
        if runner_spec(self.runner).remote and not self.ssh_host:
            raise ValueError(f"device.runner is '{self.runner}' but device.ssh_host is not set (write user@host)")
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

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, v: str) -> str:
        if not TARGET_NAME.fullmatch(v):
            raise ValueError(f"name {v!r} must be letters, digits, '.', '_' or '-', starting with a letter or "
                             "digit, at most 64 characters (it names the calibration file)")
        return v

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
