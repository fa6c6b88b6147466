"""`ssh` runner: copy the GGUF and the bundled benchmark script to a remote, run it there, parse JSON.

The remote needs python3 with llama-cpp-python; nothing of edgeprune. bench_worker.py is
stdlib + llama_cpp only, so it is copied as-is. Each run uses a fresh remote temp dir, removed
afterwards. BatchMode (no password prompts) and ConnectTimeout make an unreachable or
misconfigured host fail in seconds instead of hanging the plan.

Untrusted strings: the host is parsed by the target's grammar (never starts with '-') and every
ssh/scp argv puts `--` before the destination, so no part of a target YAML becomes an ssh option.
The remote temp dir (mktemp's output) must look like what mktemp makes, and is quoted in every
remote command. The host-key policy is device.ssh_host_key (default accept-new: a host's key is
trusted the first time it is seen, a changed key is refused); it is recorded with each measurement.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from edgeprune.errors import ToolchainError

WORKER = Path(__file__).resolve().parent / "bench_worker.py"
RUN_TIMEOUT_S = 1800  # one benchmark, model load included
REMOTE_TMP = re.compile(r"/tmp/edgeprune-bench\.[A-Za-z0-9]{6,}")


def ssh_base(device):
    """(ssh argv prefix, scp argv prefix, parsed host) from a target's device section.
    Both prefixes end before `--`; the caller appends `--`, the destination, then the rest."""
    from edgeprune.devices.reachability import parse_host

    parsed = parse_host(device.ssh_host)
    port = device.ssh_port if device.ssh_port != 22 else (parsed.port or 22)
    policy = getattr(device, "ssh_host_key", "accept-new")
    if policy not in ("accept-new", "yes"):
        from edgeprune.errors import ConfigError

        raise ConfigError(f"ssh_host_key {policy!r} is not accept-new or yes", where="device.ssh_host_key",
                          fix="write ssh_host_key: accept-new (trust on first use) or yes (known_hosts only)")
    opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={device.connect_timeout_s}",
            "-o", f"StrictHostKeyChecking={policy}"]
    known = os.environ.get("EDGEPRUNE_SSH_KNOWN_HOSTS")
    if known:  # tests point this at a temp file so a throwaway host key never lands in ~/.ssh
        opts += ["-o", f"UserKnownHostsFile={known}"]
    if device.ssh_key:
        opts += ["-i", str(Path(device.ssh_key).expanduser())]
    return ["ssh", "-p", str(port), *opts], ["scp", "-q", "-P", str(port), *opts], parsed


def remote_dir(out: str, where: str) -> str:
    """mktemp's output, refused unless it is what mktemp makes: it goes into scp's destination,
    which legacy scp hands to the remote shell."""
    path = out.strip()
    if not REMOTE_TMP.fullmatch(path):
        raise ToolchainError(f"the remote mktemp printed {path[:80]!r}, not a /tmp/edgeprune-bench.XXXXXX path",
                             where=where, fix="check the remote's shell prints nothing on non-interactive login")
    return path


def _run(argv: list[str], what: str, where: str, timeout: float) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{what} timed out after {timeout:g} s", where=where,
                             fix="check the device is on and reachable, or raise device.connect_timeout_s") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        raise ToolchainError(f"{what} failed (exit {res.returncode}): {last}", where=where,
                             fix="check `ssh` to the host works without a password (BatchMode) and that "
                                 "device.ssh_python has llama-cpp-python")
    return res.stdout


def run_ssh(gguf: Path, spec, device, reference: Path | None = None) -> dict:
    """`reference`: a second GGUF copied along and measured interleaved with `gguf` (bench_worker.run_paired)."""
    ssh_opts, scp, parsed = ssh_base(device)
    ssh = [*ssh_opts, "--", parsed.destination()]
    where = f"ssh {parsed.destination()}"
    connect = device.connect_timeout_s + 20
    remote = remote_dir(_run([*ssh, "mktemp -d /tmp/edgeprune-bench.XXXXXX"], "creating a remote temp dir",
                             where, connect), where)
    try:
        _run([*scp, "--", str(gguf), str(WORKER), parsed.scp_destination(f"{remote}/")], "copying the GGUF", where,
             connect + gguf.stat().st_size / 5e6)  # >= 5 MB/s, or it is not worth waiting
        if reference is not None:  # in its own folder: a pruned GGUF and its baseline may share a file name
            _run([*ssh, f"mkdir {shlex.quote(remote + '/ref')}"], "creating a remote temp dir", where, connect)
            _run([*scp, "--", str(reference), parsed.scp_destination(f"{remote}/ref/")],
                 "copying the reference GGUF", where, connect + reference.stat().st_size / 5e6)
        argv = [device.ssh_python, f"{remote}/bench_worker.py", f"{remote}/{gguf.name}", str(spec.prompt_tokens),
                str(spec.gen_tokens), str(spec.repetitions), str(spec.warmup), str(spec.threads or 0)]
        if reference is not None:
            argv.append(f"{remote}/ref/{reference.name}")
        if spec.evict_mb:
            argv.append(f"--evict-mb={spec.evict_mb}")
        cmd = " ".join(shlex.quote(x) for x in argv)
        out = _run([*ssh, cmd], "the remote benchmark", where, RUN_TIMEOUT_S)
    finally:
        subprocess.run([*ssh, f"rm -rf -- {shlex.quote(remote)}"], capture_output=True, timeout=connect)
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ToolchainError("the remote benchmark printed no JSON", where=where,
                             fix="run bench_worker.py on the remote by hand to see its error") from None
    data.update({"runner": "ssh", "measured": True, "ssh_host": device.ssh_host,
                 "ssh_host_key": getattr(device, "ssh_host_key", "accept-new")})
    from edgeprune.devices.runners import check_spread

    return check_spread(data, where)
