"""Wake-ups for event watchers when a session's (or a workflow's) event log grows.

A notification only says "session S now has events up to seq N"; watchers always read the
events themselves from the database (by seq), so a lost, duplicated or reordered notification
can delay a watcher but never make it skip or repeat an event.

* :class:`LocalNotifier` (SQLite, or any single process): in-process only.
* :class:`PostgresNotifier`: the appender's transaction runs ``pg_notify`` (delivered at
  commit, to every replica), and one dedicated ``LISTEN`` connection per replica fans
  notifications out to its local watchers. The connection is re-opened after a failure;
  watchers meanwhile fall back to polling.

Revoked API keys travel the same way on their own channel (``KEY_CHANNEL``): the deleting
transaction notifies every replica, and each hands the key's name to its key watchers (the
``WatchApiKeys`` streams of the replicas that cache keys). A watcher that may have missed a
revocation (the listener reconnected) is told to reset: drop every cached key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import URL

__all__ = [
    "CHANNEL",
    "KEY_CHANNEL",
    "RESET",
    "WORKFLOW_CHANNEL",
    "EventNotifier",
    "LocalNotifier",
    "PostgresNotifier",
    "Subscription",
]

CHANNEL = "agentmesh_events"
#: Workflow event logs notify on their own channel (their keys are workflow rows, not sessions).
WORKFLOW_CHANNEL = "agentmesh_workflow_events"
KEY_CHANNEL = "agentmesh_api_keys"
# What a key watcher receives: a revoked key's name, RESET (drop every cached key), or None
# (the service is stopping: end the watch, the client re-opens it elsewhere).
RESET = ""

_logger = logging.getLogger("agentmesh.memory.notify")


class Subscription:
    """A watcher's view of one session's high-water mark; await :meth:`wait_beyond`."""

    def __init__(self, session_pk: int) -> None:
        self.session_pk = session_pk
        self.latest_seq = 0
        self._changed = asyncio.Event()

    def notify(self, seq: int) -> None:
        if seq > self.latest_seq:
            self.latest_seq = seq
        self._changed.set()

    async def wait_beyond(self, seq: int, timeout: float) -> None:  # noqa: ASYNC109
        """Return once a notification says there is something after ``seq``, or on timeout."""
        if self.latest_seq > seq:
            return
        self._changed.clear()
        if self.latest_seq > seq:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()


class EventNotifier(Protocol):
    """Port: how appenders announce new events and watchers hear of them."""

    def notification(self, session_pk: Any, last_seq: Any) -> tuple[Any, ...]:
        """SQL expressions to add to the appending ``UPDATE ... RETURNING`` (which yields the
        session's key and new last seq), so that the commit also notifies other replicas."""

    def published(self, session_pk: int, last_seq: int) -> None:
        """Called after the appending transaction committed."""

    def subscribe(self, session_pk: int) -> contextlib.AbstractContextManager[Subscription]:
        """Register a watcher for one session."""

    def key_revocation(self, name: str) -> sa.Executable | None:
        """SQL to run in the transaction that revokes the key `name` (None: nothing to run),
        so that its commit also notifies other replicas."""

    def key_revoked(self, name: str) -> None:
        """Called after the revoking transaction committed."""

    def watch_keys(self) -> contextlib.AbstractContextManager[asyncio.Queue[str | None]]:
        """Register a key watcher: revoked key names (or `RESET`) arrive on the queue, and
        None once `end_key_watches` was called."""

    def end_key_watches(self) -> None:
        """End every key watch, now and from now on (the service is stopping)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalNotifier:
    """In-process fan-out: wakes this process's watchers after a commit."""

    def __init__(self) -> None:
        self._subscribers: dict[int, set[Subscription]] = {}
        self._key_watchers: set[asyncio.Queue[str | None]] = set()
        self._key_watches_ended = False

    def key_revocation(self, name: str) -> sa.Executable | None:
        return None

    def key_revoked(self, name: str) -> None:
        for queue in tuple(self._key_watchers):
            queue.put_nowait(name)

    def _reset_key_watchers(self) -> None:
        for queue in tuple(self._key_watchers):
            queue.put_nowait(RESET)

    def end_key_watches(self) -> None:
        self._key_watches_ended = True
        for queue in tuple(self._key_watchers):
            queue.put_nowait(None)

    @contextlib.contextmanager
    def watch_keys(self) -> Iterator[asyncio.Queue[str | None]]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        if self._key_watches_ended:
            queue.put_nowait(None)
        self._key_watchers.add(queue)
        try:
            yield queue
        finally:
            self._key_watchers.discard(queue)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscribers.clear()

    def notification(self, session_pk: Any, last_seq: Any) -> tuple[Any, ...]:
        return ()

    def published(self, session_pk: int, last_seq: int) -> None:
        for subscription in tuple(self._subscribers.get(session_pk, ())):
            subscription.notify(last_seq)

    @contextlib.contextmanager
    def subscribe(self, session_pk: int) -> Iterator[Subscription]:
        subscription = Subscription(session_pk)
        self._subscribers.setdefault(session_pk, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(session_pk)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[session_pk]


class PostgresNotifier(LocalNotifier):
    """LISTEN/NOTIFY across replicas, plus the in-process wake-up for this replica."""

    def __init__(self, url: URL, *, reconnect_seconds: float = 1.0, channel: str = CHANNEL) -> None:
        super().__init__()
        self._channel = channel
        # asyncpg takes a plain postgresql:// DSN.
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._reconnect_seconds = reconnect_seconds
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._stopping = False

    @property
    def listening(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="pg-listen")
        # Start serving with the listener up when the database is reachable; if it is not,
        # watchers poll until the listener connects.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._connected.wait()

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await super().close()

    def notification(self, session_pk: Any, last_seq: Any) -> tuple[Any, ...]:
        payload = sa.cast(session_pk, sa.Text) + ":" + sa.cast(last_seq, sa.Text)
        return (sa.func.pg_notify(self._channel, payload).label("notified"),)

    def key_revocation(self, name: str) -> sa.Executable | None:
        return sa.select(sa.func.pg_notify(KEY_CHANNEL, name))

    def _on_key_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload:
            LocalNotifier.key_revoked(self, payload)

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        pk, _, seq = payload.partition(":")
        try:
            session_pk, last_seq = int(pk), int(seq)
        except ValueError:
            return
        LocalNotifier.published(self, session_pk, last_seq)

    def _wake_all(self) -> None:
        for subscribers in tuple(self._subscribers.values()):
            for subscription in tuple(subscribers):
                subscription.notify(0)

    async def _listen_forever(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        while not self._stopping:
            connection: Any = None
            try:
                connection = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                connection.add_termination_listener(partial(_set_event, lost))
                await connection.add_listener(self._channel, self._on_notification)
                if self._channel == CHANNEL:  # one LISTEN connection carries key revocations
                    await connection.add_listener(KEY_CHANNEL, self._on_key_notification)
                self._connected.set()
                # Anything appended while we were not listening: let watchers re-read.
                self._wake_all()
                self._reset_key_watchers()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(15):
                            await lost.wait()
                    if not lost.is_set():
                        await connection.execute("SELECT 1")  # detect a silent drop
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _logger.warning("event listener connection failed: %s", type(error).__name__)
            finally:
                self._connected.clear()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            if not self._stopping:
                self._wake_all()
                await asyncio.sleep(self._reconnect_seconds)


def _set_event(event: asyncio.Event, *_: object) -> None:
    event.set()
