"""The one path every session event takes: stamped, batched, stored, then visible.

`EventRecorder` gives each event the session, time and trace id, and stores it through the
`SessionStore` (which assigns the gapless seq) before anyone can see it. Text and thinking
deltas are merged per message and stored in small batches: a batch is written at the latest
`flush_interval` (50 ms) after its first delta, and at once before any other event, so the
order clients see is the order things happened.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from agentmesh.common.v1 import events_pb2

from .ports import SessionStore


@dataclass
class _PendingDelta:
    agent: str
    message_id: str
    task_id: str
    thinking: bool
    parts: list[str] = field(default_factory=list)


class EventRecorder:
    """Stores one session's events in order; deltas batched at most `flush_interval` apart."""

    def __init__(
        self,
        store: SessionStore,
        *,
        tenant: str,
        session: str,
        trace_id: str = "",
        flush_interval: float = 0.05,
    ) -> None:
        self._store = store
        self._tenant = tenant
        self._session = session
        self.trace_id = trace_id
        self._flush_interval = flush_interval
        self._pending: list[_PendingDelta] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self.last_seq = 0

    async def emit(self, event: events_pb2.SessionEvent) -> int:
        """Store `event` (after any pending deltas) and return its seq."""
        async with self._lock:
            batch = self._take_pending()
            batch.append(self._stamp(event))
            return await self._write(batch)

    async def delta(
        self, *, agent: str, message_id: str, text: str, thinking: bool = False, task_id: str = ""
    ) -> None:
        """Queue streamed text; it is stored within `flush_interval`."""
        if not text:
            return
        last = self._pending[-1] if self._pending else None
        if (
            last is not None
            and last.message_id == message_id
            and last.thinking == thinking
            and last.agent == agent
        ):
            last.parts.append(text)
        else:
            self._pending.append(_PendingDelta(agent, message_id, task_id, thinking, [text]))
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_later())

    async def flush(self) -> None:
        """Store pending deltas now."""
        async with self._lock:
            batch = self._take_pending()
            if batch:
                await self._write(batch)

    async def close(self) -> None:
        """Flush and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self.flush()

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_interval)
        await self.flush()

    def _take_pending(self) -> list[events_pb2.SessionEvent]:
        events = []
        for pending in self._pending:
            text = "".join(pending.parts)
            event = events_pb2.SessionEvent(
                agent=pending.agent, message_id=pending.message_id, task_id=pending.task_id
            )
            if pending.thinking:
                event.thinking.text = text
            else:
                event.content_delta.text = text
            events.append(self._stamp(event))
        self._pending.clear()
        return events

    def _stamp(self, event: events_pb2.SessionEvent) -> events_pb2.SessionEvent:
        event.session = self._session
        if not event.trace_id:
            event.trace_id = self.trace_id
        if not event.HasField("time"):
            now = timestamp_pb2.Timestamp()
            now.GetCurrentTime()
            event.time.CopyFrom(now)
        return event

    async def _write(self, batch: list[events_pb2.SessionEvent]) -> int:
        self.last_seq = await self._store.append_events(self._tenant, self._session, batch)
        return self.last_seq
