"""Relaying a server stream of session events to one HTTP client, with bounded memory.

A pump task reads the gRPC stream into a queue; the client's writer takes from it. The queue
holds at most `buffer_bytes` of events: when it is full the pump stops reading, so gRPC flow
control holds back the orchestrator and a client that reads steadily, even slower than a
replay comes, just gets the events at its own pace. A client that makes no room for
`slow_client_seconds` is cut off: it still gets everything queued, then the stream ends with a
`SLOW_CONSUMER` error naming the last seq delivered, from which the client resumes (SSE's
`Last-Event-ID` does that by itself). A client that stops reading altogether is disconnected
once one write has waited `write_timeout` seconds. An idle stream sends a keep-alive every
`keepalive_seconds`.

The framings (SSE, newline-delimited JSON, WebSocket) are :class:`Sink` implementations.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf import message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh.common.v1 import events_pb2

from .errors import DOMAIN, ErrorReply, from_rpc_error

__all__ = ["Relay", "RelaySettings", "Sink", "slow_consumer"]


class _Signal(enum.Enum):
    END = "end"  # the call ended (its failure, if any, is in `_failure`)
    OVERFLOW = "overflow"  # the client made no room for `slow_client_seconds`
    STOP = "stop"  # the edge is shutting down, or the client left


@dataclass(frozen=True)
class RelaySettings:
    buffer_bytes: int = 1024 * 1024
    slow_client_seconds: float = 10.0
    keepalive_seconds: float = 15.0
    write_timeout: float = 30.0
    first_event_wait: float = 1.0


class Sink(Protocol):
    """One client's framing of the stream."""

    async def event(self, event: events_pb2.SessionEvent) -> None: ...

    async def keepalive(self) -> None: ...

    async def error(self, reply: ErrorReply) -> None: ...


def slow_consumer(last_seq: int) -> ErrorReply:
    """The error that ends a stream whose client stopped making room."""
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message=(
            "the client read too slowly and the stream was closed; resume after seq "
            f"{last_seq} (Last-Event-ID or ?after_seq=)"
        ),
    )
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason="SLOW_CONSUMER", domain=DOMAIN, metadata={"after_seq": str(last_seq)}
        )
    )
    return ErrorReply(status)


@dataclass(eq=False)
class Relay:
    """One server stream of events (``stream`` yields replies with an ``event`` field)."""

    stream: AsyncIterator[message.Message]
    settings: RelaySettings
    on_cut_off: Callable[[], None] = lambda: None
    last_seq: int = 0
    delivered: int = 0
    received: int = 0
    overflowed: bool = False
    stopped: bool = False
    buffered_bytes: int = 0
    _queue: asyncio.Queue[tuple[events_pb2.SessionEvent, int] | _Signal] = field(
        default_factory=asyncio.Queue
    )
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _failure: ErrorReply | None = None
    _started: asyncio.Event = field(default_factory=asyncio.Event)
    _pump: asyncio.Task[None] | None = None

    async def start(self) -> ErrorReply | None:
        """Start reading; return the call's error if it failed at once (nothing sent yet),
        so the caller can answer with a plain HTTP error instead of an opened stream.

        The call counts as accepted at its first event, or when the server sends its headers
        (the orchestrator's StreamSession does once its checks pass, so an idle stream opens
        at once), or after `first_event_wait` at the latest."""
        self._pump = asyncio.create_task(self._read())
        waits = [asyncio.ensure_future(self._started.wait())]
        headers = getattr(self.stream, "initial_metadata", None)
        if callable(headers):
            waits.append(asyncio.ensure_future(headers()))
        _, pending = await asyncio.wait(
            waits, timeout=self.settings.first_event_wait, return_when=asyncio.FIRST_COMPLETED
        )
        for wait in pending:
            wait.cancel()
        done = getattr(self.stream, "done", None)
        if callable(done) and done():
            # Headers and status came together (an error before any event): let the pump
            # record the failure.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._started.wait(), self.settings.first_event_wait)
        if self._failure is not None and self.received == 0:
            return self._failure
        return None

    @property
    def ended_empty(self) -> bool:
        """The call has ended, without error, before a single event."""
        done = self._pump is not None and self._pump.done()
        return done and self.received == 0 and self._failure is None

    def stop(self) -> None:
        """End the stream now, without an error (the client may resume elsewhere)."""
        self.stopped = True
        self._queue.put_nowait(_Signal.STOP)

    async def _read(self) -> None:
        try:
            async for reply in self.stream:
                self._started.set()
                self.received += 1
                event: events_pb2.SessionEvent = getattr(reply, "event")  # noqa: B009
                size = event.ByteSize()
                if not await self._make_room(size):
                    self.overflowed = True
                    self.on_cut_off()
                    self._queue.put_nowait(_Signal.OVERFLOW)
                    return
                self.buffered_bytes += size
                self._queue.put_nowait((event, size))
        except grpc.RpcError as error:
            self._failure = from_rpc_error(error)
        finally:
            self._started.set()
        self._queue.put_nowait(_Signal.END)

    async def _make_room(self, size: int) -> bool:
        """Wait until ``size`` more bytes fit (one event always fits an empty queue); False
        when the client made no room within `slow_client_seconds`."""
        while self.buffered_bytes and self.buffered_bytes + size > self.settings.buffer_bytes:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), self.settings.slow_client_seconds)
            except TimeoutError:
                return False
        return True

    async def run(self, sink: Sink) -> None:
        """Deliver until the stream ends, fails, is cut off or stopped, or the client leaves."""
        try:
            while True:
                try:
                    item = await asyncio.wait_for(
                        self._queue.get(), self.settings.keepalive_seconds
                    )
                except TimeoutError:
                    await self._write(sink.keepalive())
                    continue
                if item is _Signal.STOP:
                    return
                if item is _Signal.OVERFLOW:
                    await self._write(sink.error(slow_consumer(self.last_seq)))
                    return
                if item is _Signal.END:
                    if self._failure is not None:
                        await self._write(sink.error(self._failure))
                    return
                event, size = item
                await self._write(sink.event(event))
                self.buffered_bytes -= size
                self._room.set()
                self.last_seq = event.seq
                self.delivered += 1
        finally:
            await self.close()

    async def _write(self, write: Awaitable[None]) -> None:
        await asyncio.wait_for(write, self.settings.write_timeout)

    async def close(self) -> None:
        """Stop reading (cancels the gRPC call); safe to call twice."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        cancel = getattr(self.stream, "cancel", None)
        if callable(cancel):
            cancel()
