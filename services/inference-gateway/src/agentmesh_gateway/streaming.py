"""Batching of a gateway event stream for a writer (the gRPC servicer, the HTTP API)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from .domain import GatewayEvent, TextDelta, ThinkingDelta, ToolCallDelta


async def coalesced(
    events: AsyncGenerator[GatewayEvent, None],
) -> AsyncGenerator[list[GatewayEvent], None]:
    """Batches of ``events``: whatever arrived while the previous batch was being written.

    A pump task reads the upstream stream while the caller writes; nothing ever waits for
    more data (an idle stream yields each event at once), but under load consecutive deltas
    that are already here travel in one gRPC message. Closing this generator cancels the pump,
    which closes the upstream request.
    """
    buffer: list[GatewayEvent] = []
    ready = asyncio.Event()
    finished = False
    writer_idle = False
    first_delta_out = False
    failure: Exception | None = None

    async def pump() -> None:
        nonlocal finished, failure, first_delta_out
        try:
            async for event in events:
                buffer.append(event)
                ready.set()
                if writer_idle and not first_delta_out and type(event) in _DELTAS:
                    # The first token matters most: let the idle writer send it now rather
                    # than after the pump has parsed whatever else already arrived with it.
                    first_delta_out = True
                    await asyncio.sleep(0)
        except Exception as exc:  # delivered after the events read before it
            failure = exc
        finally:
            finished = True
            ready.set()

    task = asyncio.create_task(pump())
    try:
        while True:
            if not buffer and not finished:
                writer_idle = True
                await ready.wait()
                writer_idle = False
                ready.clear()
            if buffer:
                batch = buffer[:]
                buffer.clear()
                yield _merge_text(batch)
            elif finished:
                break
        if failure is not None:
            raise failure
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await events.aclose()


_DELTAS = (TextDelta, ThinkingDelta, ToolCallDelta)


def _merge_text(batch: list[GatewayEvent]) -> list[GatewayEvent]:
    if len(batch) == 1:
        return batch
    merged: list[GatewayEvent] = []
    for event in batch:
        if merged and type(event) is TextDelta and type(merged[-1]) is TextDelta:
            merged[-1] = TextDelta(merged[-1].text + event.text)
        elif merged and type(event) is ThinkingDelta and type(merged[-1]) is ThinkingDelta:
            merged[-1] = ThinkingDelta(merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged
