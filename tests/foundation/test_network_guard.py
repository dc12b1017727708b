"""The suite refuses any connection that leaves the machine, loudly and at once."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from agentmesh_common.netguard import ExternalNetworkError, is_loopback_host


def test_resolving_a_public_host_fails_loudly() -> None:
    with pytest.raises(ExternalNetworkError, match=r"api\.openai\.com"):
        socket.getaddrinfo("api.openai.com", 443)


def test_connecting_to_a_public_address_fails_before_any_packet() -> None:
    with socket.socket() as sock, pytest.raises(ExternalNetworkError, match=r"1\.1\.1\.1:443"):
        sock.connect(("1.1.1.1", 443))


def test_private_range_addresses_are_refused_too() -> None:
    with socket.socket() as sock, pytest.raises(ExternalNetworkError):
        sock.connect(("10.0.0.1", 80))


async def test_httpx_to_a_provider_url_is_refused() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError, match="forbidden"):
            await client.get("https://api.anthropic.com/v1/messages")


async def test_loopback_still_works() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("localhost", port)
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        writer.close()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("192.168.1.1", False),
        ("8.8.8.8", False),
        ("example.com", False),
    ],
)
def test_loopback_classification(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected
