"""Ending a client stream the caller is still sending.

A server that answers a client-streaming call while the client is still writing races the
client: grpc-python's client then often fails its next write and reports INTERNAL ("Internal
error from Core") instead of the status the server sent. So a handler that refuses a stream
part-way reads (and drops) the rest first, up to a bound, and answers after the client's
half-close: the client sees the real error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from google.protobuf.message import Message

from .errors import AgentmeshError

__all__ = ["DRAIN_LIMIT_BYTES", "DRAIN_LIMIT_SECONDS", "drain"]

#: Past this many dropped bytes, or this long, the answer is sent anyway.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
DRAIN_LIMIT_SECONDS = 10.0


async def drain(
    messages: AsyncIterator[Message],
    limit_bytes: int = DRAIN_LIMIT_BYTES,
    limit_seconds: float = DRAIN_LIMIT_SECONDS,
) -> None:
    """Read and drop what is left of `messages`, until its end or a limit."""
    dropped = 0
    # An undecodable part ends the reading (nothing more can be read), as does a limit.
    with contextlib.suppress(AgentmeshError, TimeoutError):
        async with asyncio.timeout(limit_seconds):
            async for message in messages:
                dropped += message.ByteSize()
                if dropped > limit_bytes:
                    return
