"""Fail fast on an unreachable ssh target, before a plan spends minutes preparing a model for it."""

from __future__ import annotations

import socket

from edgeprune.errors import ConfigError


def split_host(ssh_host: str) -> tuple[str, int]:
    """'user@host:2222' or 'host' -> (host, port)."""
    host = ssh_host.rsplit("@", 1)[-1]
    if host.count(":") == 1:
        name, port = host.split(":")
        if not port.isdigit():
            raise ConfigError(f"ssh port '{port}' is not a number", where="device.ssh_host", fix="write user@host:22")
        return name, int(port)
    return host, 22


def check_ssh_reachable(ssh_host: str, port: int | None = None, timeout_s: float = 5.0) -> None:
    """TCP connect to the ssh port within `timeout_s`; DNS failure or refusal answers at once."""
    host, host_port = split_host(ssh_host)
    port = port or host_port
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except socket.gaierror:
        what = f"ssh target '{host}' does not resolve"
    except socket.timeout:
        what = f"ssh target {host}:{port} did not answer within {timeout_s:g} s"
    except OSError as exc:
        what = f"ssh target {host}:{port} unreachable ({exc.strerror or exc})"
    raise ConfigError(what, where="device.ssh_host", fix="check the host name, that the device is on and sshd "
                      "listens, or use runner: local")
