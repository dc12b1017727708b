"""The servicer's write batching: an idle stream gets every event at once, deltas already read
while a write is in flight travel together, an error still follows the events read before it,
and closing the batches stops the upstream at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from agentmesh_common import Unavailable
from agentmesh_gateway.domain import AttemptStarted, GatewayEvent, TextDelta, ToolCallDelta
from agentmesh_gateway.streaming import coalesced


async def test_buffered_text_is_merged_but_other_events_keep_their_order() -> None:
    async def burst() -> AsyncGenerator[GatewayEvent, None]:
        yield AttemptStarted("openai", "m", "d", 1)
        for piece in ("a", "b", "c"):
            yield TextDelta(piece)
        yield ToolCallDelta(0, "call_1", "f", "{}")
        yield TextDelta("d")

    batches: list[list[GatewayEvent]] = []
    async for batch in coalesced(burst()):
        batches.append(batch)
        await asyncio.sleep(0.01)  # a write in flight: the pump reads everything else
    flat = [event for batch in batches for event in batch]
    texts = "".join(e.text for e in flat if isinstance(e, TextDelta))
    assert texts == "abcd"
    assert isinstance(flat[0], AttemptStarted)
    assert [type(e).__name__ for e in flat].index("ToolCallDelta") < len(flat) - 1
    # the first delta goes out at once; what arrives during that write travels together
    assert batches[0] == [AttemptStarted("openai", "m", "d", 1), TextDelta("a")]
    assert batches[1:] == [[TextDelta("bc"), ToolCallDelta(0, "call_1", "f", "{}"), TextDelta("d")]]


async def test_a_slow_stream_gets_each_delta_as_soon_as_it_arrives() -> None:
    async def slow() -> AsyncGenerator[GatewayEvent, None]:
        for piece in ("a", "b", "c"):
            await asyncio.sleep(0.01)
            yield TextDelta(piece)

    batches = [batch async for batch in coalesced(slow())]
    assert [[e.text for e in b if isinstance(e, TextDelta)] for b in batches] == [
        ["a"],
        ["b"],
        ["c"],
    ]


async def test_an_error_follows_the_events_read_before_it() -> None:
    async def failing() -> AsyncGenerator[GatewayEvent, None]:
        yield TextDelta("partial")
        raise Unavailable("upstream broke")

    seen: list[GatewayEvent] = []

    async def consume() -> None:
        async for batch in coalesced(failing()):
            seen.extend(batch)

    with pytest.raises(Unavailable):
        await consume()
    assert seen == [TextDelta("partial")]


async def test_closing_the_batches_closes_the_upstream_generator() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncGenerator[GatewayEvent, None]:
        try:
            yield TextDelta("first")
            await asyncio.sleep(60)
            yield TextDelta("never")
        finally:
            closed.set()

    batches = coalesced(endless())
    assert (await anext(batches)) == [TextDelta("first")]
    await asyncio.wait_for(batches.aclose(), 1)
    assert closed.is_set()
