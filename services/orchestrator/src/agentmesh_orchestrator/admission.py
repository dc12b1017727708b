"""Admission control: how much work one replica takes on, refused before it starts.

Two gates, each a bound on work in progress plus a short bounded queue in front of it:

* **sessions**: sessions running on this replica (a `Run`, `Step` or `Execute`, and sessions
  taken over from a dead replica), at most `max_running_sessions`;
* **requests**: unary public RPCs being served at once (CreateSession, GetSession, ...), at most
  `max_concurrent_requests`; event streams (`StreamSession`) are not counted, they only wait.

A caller over a bound waits in the gate's queue (at most `max_queued_*` callers, each at most
`queue_seconds`, and never past its own deadline); when the queue is full or the wait ends it
is refused with RESOURCE_EXHAUSTED, reason REPLICA_AT_CAPACITY and a RetryInfo delay, before
any work is done. Under overload a client therefore hears "retry in N s" at once (and may go to
another replica), instead of every call slowing down until deadlines expire inside the server.
A takeover never waits: a replica that is full leaves an orphaned session to another replica.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentmesh_common import ResourceExhausted

from .observability import OrchestratorMetrics

# Margin kept between the end of a queued wait and the caller's own deadline, so a refusal
# reaches the caller before its deadline does.
DEADLINE_MARGIN_SECONDS = 0.25


@dataclass(frozen=True)
class AdmissionSettings:
    """Bounds on the work one replica takes on (0 means no bound)."""

    max_running_sessions: int = 64
    max_queued_sessions: int = 64
    max_concurrent_requests: int = 64
    max_queued_requests: int = 256
    queue_seconds: float = 2.0
    retry_after_seconds: float = 1.0


class Slot:
    """A place in a gate, held until `release` (which is safe to call twice)."""

    def __init__(self, gate: Gate | None) -> None:
        self._gate = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release()


class Gate:
    """At most `limit` holders; up to `queue` more wait (first come, first served) for at most
    `wait_seconds`; everyone else is refused with RESOURCE_EXHAUSTED and a RetryInfo delay."""

    def __init__(
        self,
        what: str,
        *,
        limit: int,
        queue: int,
        wait_seconds: float,
        retry_after_seconds: float,
        jitter: Callable[[], float] = random.random,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.what = what
        self._on_refused = on_refused
        self.limit = limit
        self.queue = queue
        self.wait_seconds = wait_seconds
        self.retry_after_seconds = retry_after_seconds
        self._jitter = jitter
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.refused = 0

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def try_acquire(self) -> Slot | None:
        """A slot now, or None (never waits, never refuses)."""
        if self.limit <= 0:
            return Slot(None)  # no bound: nothing to count
        if self.held < self.limit and not self.waiting:
            self.held += 1
            return Slot(self)
        return None

    async def acquire(self, *, time_remaining: float | None = None) -> Slot:
        """A slot, after waiting in the queue if need be; `ResourceExhausted` when the queue is
        full or the wait (bounded by `time_remaining`, the caller's deadline) ends first."""
        slot = self.try_acquire()
        if slot is not None:
            return slot
        wait = self.wait_seconds
        if time_remaining is not None:
            wait = min(wait, time_remaining - DEADLINE_MARGIN_SECONDS)
        if self.waiting >= self.queue or wait <= 0:
            raise self._refusal()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted just as the wait ended: pass it on
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise self._refusal() from None
            raise
        return Slot(self)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the first waiter
                return
        self.held -= 1

    def _refusal(self) -> ResourceExhausted:
        self.refused += 1
        if self._on_refused is not None:
            self._on_refused()
        # Jitter spreads the retries of a crowd refused together.
        retry_after = round(self.retry_after_seconds * (1 + 0.5 * self._jitter()), 3)
        return ResourceExhausted(
            f"this replica is at its limit of {self.limit} {self.what}; retry after"
            f" {retry_after} s (another replica may have room)",
            reason="REPLICA_AT_CAPACITY",
            retry_after=retry_after,
            metadata={"limit": self.what, "max": str(self.limit)},
        )


class Admission:
    """The replica's two gates (see the module docstring)."""

    def __init__(
        self, settings: AdmissionSettings | None = None, metrics: OrchestratorMetrics | None = None
    ) -> None:
        self.settings = settings = settings or AdmissionSettings()

        def counted(limit: str) -> Callable[[], None] | None:
            if metrics is None:
                return None
            return metrics.admission_refused.labels(limit).inc

        self.sessions = Gate(
            "running sessions",
            limit=settings.max_running_sessions,
            queue=settings.max_queued_sessions,
            wait_seconds=settings.queue_seconds,
            retry_after_seconds=settings.retry_after_seconds,
            on_refused=counted("sessions"),
        )
        self.requests = Gate(
            "concurrent requests",
            limit=settings.max_concurrent_requests,
            queue=settings.max_queued_requests,
            wait_seconds=settings.queue_seconds,
            retry_after_seconds=min(settings.retry_after_seconds, 0.5),
            on_refused=counted("requests"),
        )


def admitted_unary(servicer: Any, gate: Gate) -> Any:
    """`servicer` with each unary RPC served only within a slot of `gate` (streams as they are).

    The generated `add_..._to_server` reads the RPC methods off the object it is given, so the
    wrapper is an object whose attributes are those methods, wrapped."""
    return _Admitted(servicer, gate)


class _Admitted:
    def __init__(self, servicer: Any, gate: Gate) -> None:
        self._servicer = servicer
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._servicer, name)
        if not name[:1].isupper() or not inspect.iscoroutinefunction(method):
            return method  # streaming RPCs (async generators) and helpers pass through
        gate = self._gate

        async def within_slot(request: Any, context: Any) -> Any:
            slot = await gate.acquire(time_remaining=context.time_remaining())
            try:
                return await method(request, context)
            finally:
                slot.release()

        within_slot.__name__ = name
        return within_slot
