"""The ssh runner against a real sshd on 127.0.0.1 (started here, throwaway keys), and its fast
failure on unreachable hosts."""

from __future__ import annotations

import glob
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeprune.config.target import Device
from edgeprune.devices import BenchSpec, get_runner
from edgeprune.errors import ToolchainError

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
needs_sshd = pytest.mark.skipif(not Path(SSHD).exists() or not shutil.which("ssh"),
                                reason="openssh-server not installed (apt-get install openssh-server)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd did not listen on {port}")


@pytest.fixture
def sshd(tmp_path, monkeypatch):
    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nKbdInteractiveAuthentication no\n"
        "Subsystem sftp internal-sftp\n")  # scp speaks SFTP since OpenSSH 9
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation dir
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    monkeypatch.setenv("EDGEPRUNE_SSH_KNOWN_HOSTS", str(d / "known_hosts"))
    try:
        wait_port(port)
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        yield Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host=f"{user}@127.0.0.1", ssh_port=port,
                     ssh_key=str(d / "client_key"), ssh_python=sys.executable, connect_timeout_s=5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_sshd
def test_ssh_runner_copies_runs_and_parses(sshd):
    from edgeprune.toolchain.hf import default_model_path

    gguf = default_model_path()
    before = set(glob.glob("/tmp/edgeprune-bench.*"))
    res = get_runner("ssh", sshd)(gguf, BenchSpec(8, 4, repetitions=1, warmup=0, threads=1))
    assert res["runner"] == "ssh" and res["measured"] is True and res["ssh_host"] == sshd.ssh_host
    assert res["model_bytes"] == gguf.stat().st_size  # the copy on the remote is the whole file
    assert res["n_prompt"] == 8 and res["n_gen"] == 4 and res["n_threads"] == 1
    assert res["tg_tps"]["median"] > 0 and res["pp_tps"]["median"] > 0 and res["peak_rss_bytes"] > 10_000_000
    assert res["host"]["cpu_model"]  # measured where: the remote's own /proc/cpuinfo
    assert set(glob.glob("/tmp/edgeprune-bench.*")) == before  # the remote temp dir is removed


@needs_sshd
def test_ssh_runner_wrong_python_is_a_one_line_error(sshd):
    from edgeprune.toolchain.hf import default_model_path

    bad = sshd.model_copy(update={"ssh_python": "/nonexistent/python3"})
    with pytest.raises(ToolchainError, match="remote benchmark failed"):
        get_runner("ssh", bad)(default_model_path(), BenchSpec(8, 4, 1, 0, 1))


def test_ssh_runner_fails_fast_when_nothing_listens(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_SSH_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    dev = Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host="nobody@127.0.0.1", ssh_port=free_port(),
                 connect_timeout_s=2)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    t = time.time()
    with pytest.raises(ToolchainError, match="ssh nobody@127.0.0.1"):
        get_runner("ssh", dev)(gguf, BenchSpec(8, 4))
    assert time.time() - t < 10


def test_ssh_runner_times_out_on_a_blackhole(tmp_path, monkeypatch):
    # 10.255.255.1 is non-routable: SYNs go unanswered, so only ConnectTimeout ends the wait
    monkeypatch.setenv("EDGEPRUNE_SSH_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    dev = Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host="x@10.255.255.1", connect_timeout_s=2)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    t = time.time()
    with pytest.raises(ToolchainError):
        get_runner("ssh", dev)(gguf, BenchSpec(8, 4))
    assert time.time() - t < 30  # ConnectTimeout 2 s (+ the subprocess guard at 22 s)
