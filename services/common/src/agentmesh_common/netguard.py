"""Refuse every network connection that does not stay on this machine.

Tests must never reach a real LLM or the internet. `install_loopback_only()` patches Python's
socket layer (used by httpx, asyncpg, asyncio and urllib) so that resolving or connecting to
any address outside 127.0.0.0/8, ::1 or a Unix socket raises `ExternalNetworkError` at once,
naming the host. The test suite installs it in-process, and services install it at start when
the environment variable `AGENTMESH_LOOPBACK_ONLY=1` is set, which the test suite does for
every process it spawns. gRPC's C core opens its own sockets; tests only ever give it
loopback targets, and services built here never dial a provider over gRPC.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

ENV_VAR = "AGENTMESH_LOOPBACK_ONLY"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_installed = {"done": False}


class ExternalNetworkError(ConnectionRefusedError):
    """A connection to a non-loopback address was attempted while the guard is installed."""


def is_loopback_host(host: str) -> bool:
    """True for loopback names and addresses (127.0.0.0/8, ::1)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _check_address(address: Any) -> None:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return
    if isinstance(address, tuple) and address:
        host = str(address[0])
        if not is_loopback_host(host):
            raise ExternalNetworkError(
                f"network access to {host}:{address[1] if len(address) > 1 else '?'} is "
                f"forbidden: only loopback connections are allowed ({ENV_VAR})"
            )


def install_loopback_only() -> None:
    """Patch the socket module so any non-loopback resolve or connect raises. Idempotent."""
    if _installed["done"]:
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            name = host.decode() if isinstance(host, bytes) else str(host)
            if not is_loopback_host(name):
                raise ExternalNetworkError(
                    f"network access to {name}:{port} is forbidden: only loopback "
                    f"connections are allowed ({ENV_VAR})"
                )
        return real_getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo
    _installed["done"] = True


def install_from_environment() -> bool:
    """Install the guard when `AGENTMESH_LOOPBACK_ONLY=1`; return whether it is installed."""
    if os.environ.get(ENV_VAR) == "1":
        install_loopback_only()
    return _installed["done"]
