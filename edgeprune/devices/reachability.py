"""Fail fast on an unreachable ssh target, before a plan spends minutes preparing a model for it."""

from __future__ import annotations

import socket

from edgeprune.config.target import SshHost, parse_ssh_host
from edgeprune.errors import ConfigError


def parse_host(ssh_host: str) -> SshHost:
    """The target's grammar (config/target.parse_ssh_host), checked again here: a Device built with
    model_copy(update=...) skips pydantic's validators, and this string goes into ssh's argv."""
    try:
        return parse_ssh_host(ssh_host)
    except ValueError as exc:
        raise ConfigError(str(exc), where="device.ssh_host", fix="write user@host, user@host:2222 or an ssh "
                          "config alias") from None


def split_host(ssh_host: str) -> tuple[str, int]:
    """'user@host:2222' or 'host' -> (host, port)."""
    parsed = parse_host(ssh_host)
    return parsed.host, parsed.port or 22


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
