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


def test_ssh_runner_times_out_on_a_silent_loopback_port(tmp_path, monkeypatch):
    """Only ConnectTimeout ends the wait: a loopback socket that accepts the TCP connection (the
    kernel's backlog) but never sends an ssh banner. Loopback only: tests send nothing off the machine.
    Mutant caught: ConnectTimeout dropped from the ssh options (the run then waits for the 22 s guard)."""
    monkeypatch.setenv("EDGEPRUNE_SSH_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dev = Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host="x@127.0.0.1",
                     ssh_port=silent.getsockname()[1], connect_timeout_s=2)
        gguf = tmp_path / "m.gguf"
        gguf.write_bytes(b"GGUF")
        t = time.time()
        with pytest.raises(ToolchainError):
            get_runner("ssh", dev)(gguf, BenchSpec(8, 4))
        assert time.time() - t < 15


HOSTILE = ["-oProxyCommand=touch pwned@127.0.0.1", "-oProxyCommand=touch${IFS}pwned", "user@-oProxyCommand=x",
           "--help", "host;touch pwned", "$(touch pwned)@host", "user@host -p 1", "user@host\nx", "a@b@host",
           "user@host:0", "user@host:99999", "user@host:22x", "", "host/../x"]


@pytest.mark.parametrize("host", HOSTILE)
def test_hostile_ssh_host_is_refused_in_the_target(host):
    """Mutant caught: Device.ssh_host without the grammar check (any string reached ssh's argv)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ssh_host"):
        Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host=host)


def test_hostile_ssh_host_in_a_target_yaml_is_one_line(tmp_path):
    """Mutant caught: the grammar check removed; the loader then accepts the option-shaped host."""
    from edgeprune.errors import ConfigError
    from edgeprune.targets import load_target

    p = tmp_path / "t.yaml"
    p.write_text('version: 1\nname: t\ndevice: {ram_gb: 8, mem_bandwidth_gbs: 10, runner: ssh, '
                 'ssh_host: "-oProxyCommand=touch pwned@127.0.0.1"}\nbudget: {}\n')
    with pytest.raises(ConfigError) as err:
        load_target(str(p))
    assert "\n" not in str(err.value) and "device.ssh_host" in str(err.value) and "[user@]host[:port]" in str(err.value)


@pytest.mark.parametrize("host", ["pi", "pi.local", "me@pi", "me.name_1@10.0.0.2:2222", "me@[::1]:22", "ci-box_2"])
def test_ordinary_ssh_hosts_and_aliases_pass(host):
    Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host=host)


def test_runner_refuses_a_hostile_host_that_skipped_validation(tmp_path, monkeypatch):
    """model_copy(update=...) skips pydantic's validators; the runner parses the host again and runs
    no subprocess. Mutant caught: ssh_base taking device.ssh_host as-is (ssh then got
    "-oProxyCommand=touch pwned@127.0.0.1" as an option)."""
    from edgeprune.errors import ConfigError

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append(argv))
    dev = Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host="me@127.0.0.1")
    bad = dev.model_copy(update={"ssh_host": f"-oProxyCommand=touch {tmp_path}/pwned@127.0.0.1"})
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="device.ssh_host"):
        get_runner("ssh", bad)(gguf, BenchSpec(8, 4))
    assert calls == [] and not (tmp_path / "pwned").exists()


class FakeRemote:
    """subprocess.run standing in for ssh/scp: records argv, answers mktemp with `tmp`."""

    def __init__(self, tmp: str):
        self.tmp, self.calls = tmp, []

    def __call__(self, argv, **kw):
        self.calls.append(list(argv))
        out = ""
        if argv[-1].startswith("mktemp"):
            out = self.tmp + "\n"
        elif "bench_worker.py" in argv[-1]:
            out = '{"tg_tps": {"median": 1}}\n'
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_every_ssh_and_scp_call_ends_options_with_double_dash(tmp_path, monkeypatch):
    """The destination follows `--`, so even a host that reached ssh unchecked could not be an option.
    Mutant caught: `--` dropped from the ssh or the scp argv."""
    fake = FakeRemote("/tmp/edgeprune-bench.AbC123")
    monkeypatch.setattr(subprocess, "run", fake)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    dev = Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host="me@box:2222")
    res = get_runner("ssh", dev)(gguf, BenchSpec(8, 4), reference=gguf)
    assert {c[0] for c in fake.calls} == {"ssh", "scp"} and len(fake.calls) == 6
    for argv in fake.calls:
        rest = argv[argv.index("--") + 1:]
        dest = rest[0] if argv[0] == "ssh" else rest[-1]
        assert dest.startswith("me@box"), argv
        assert "-p" in argv[:argv.index("--")] or "-P" in argv[:argv.index("--")]
        assert argv[argv.index("-P" if argv[0] == "scp" else "-p") + 1] == "2222"
    assert res["ssh_host_key"] == "accept-new"  # the policy is stated with the measurement


def test_host_key_policy_is_configurable(tmp_path, monkeypatch):
    """Mutant caught: StrictHostKeyChecking hard-coded to accept-new."""
    fake = FakeRemote("/tmp/edgeprune-bench.AbC123")
    monkeypatch.setattr(subprocess, "run", fake)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    dev = Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host="box", ssh_host_key="yes")
    assert get_runner("ssh", dev)(gguf, BenchSpec(8, 4))["ssh_host_key"] == "yes"
    assert all("StrictHostKeyChecking=yes" in argv for argv in fake.calls)


@pytest.mark.parametrize("printed", ["/tmp/edgeprune-bench.x; touch pwned", "-rf /", "Welcome!\n/tmp/a",
                                     "/tmp/edgeprune-bench.$(id)"])
def test_remote_temp_dir_that_is_not_mktemps_is_refused(tmp_path, monkeypatch, printed):
    """The remote's mktemp output goes into scp's destination (a remote shell with legacy scp).
    Mutant caught: mktemp's output used unchecked."""
    fake = FakeRemote(printed)
    monkeypatch.setattr(subprocess, "run", fake)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    dev = Device(ram_gb=8, mem_bandwidth_gbs=10, runner="ssh", ssh_host="box")
    with pytest.raises(ToolchainError, match="mktemp printed"):
        get_runner("ssh", dev)(gguf, BenchSpec(8, 4))
    assert not any(argv[0] == "scp" for argv in fake.calls)
