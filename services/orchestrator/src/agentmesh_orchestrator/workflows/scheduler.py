"""The due-work loop every orchestrator replica runs: claim what is due from the memory
service, run it, sleep until the next due time.

Nothing waits in memory only: due work is rows in the database, claimed under a lease (FOR
UPDATE SKIP LOCKED on PostgreSQL, the one writer on SQLite), so whichever replica is up fires
it, and a replica killed while holding a claim loses it when the lease runs out; another then
claims the item and runs it again (its effects are keyed, so they happen once). While an item
runs, its claim is renewed. Items are claimed `lookahead_seconds` before they are due and
each starts at its due time, so the claim's round trip (a write, which waits for the database's
writer under load) is not part of the delay from due to fired. The loop sleeps until the
earliest known due time less the lookahead (at most `poll_seconds`, to see work other replicas
scheduled) and wakes early when this replica schedules something sooner. On shutdown it stops
claiming, cancels what runs (and what waits for its due time) and gives the claims back so
another replica takes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agentmesh.memory.v1 import workflows_pb2 as store_pb2
from agentmesh_common import AgentmeshError, FailedPrecondition
from agentmesh_common.protobuf import duration
from agentmesh_orchestrator.adapters.memory_client import MemoryClient

Handler = Callable[[store_pb2.DueWork, store_pb2.ClaimRef], Coroutine[Any, Any, None]]

_logger = logging.getLogger("agentmesh.orchestrator.scheduler")


@dataclass(frozen=True)
class SchedulerSettings:
    owner: str
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    lookahead_seconds: float = 0.5
    max_in_flight: int = 16


class DueWorkLoop:
    def __init__(
        self,
        memory: MemoryClient,
        handler: Handler,
        settings: SchedulerSettings,
        *,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._memory = memory
        self._handler = handler
        self._settings = settings
        self._now = now
        self._woken = asyncio.Event()
        self._sleeping_until: dt.datetime | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self.fired = 0

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="due-work-loop")

    def wake(self, at: dt.datetime) -> None:
        """Something is due at `at`: wake up if the loop sleeps past its claim time."""
        claim_at = at - dt.timedelta(seconds=self._settings.lookahead_seconds)
        if self._sleeping_until is None or claim_at < self._sleeping_until:
            self._woken.set()

    async def stop(self) -> None:
        """Stop claiming, cancel what runs, give the claims back. Safe to call twice."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()  # it may be waiting on a claim call: do not wait for it
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(AgentmeshError):
            await self._memory.call(
                "",
                self._memory.workflows.ReleaseDueWork,
                store_pb2.ReleaseDueWorkRequest(owner=self._settings.owner),
                deadline_seconds=1.0,
            )

    async def _run(self) -> None:
        settings = self._settings
        while not self._stopping:
            next_due = await self._claim()
            wait = settings.poll_seconds
            if next_due is not None:
                until_claimable = (next_due - self._now()).total_seconds()
                wait = min(wait, max(until_claimable - settings.lookahead_seconds, 0.0))
            if len(self._tasks) >= settings.max_in_flight:
                wait = settings.poll_seconds  # a finishing task wakes us
            self._sleeping_until = self._now() + dt.timedelta(seconds=wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout=wait)
            self._woken.clear()
            self._sleeping_until = None

    async def _claim(self) -> dt.datetime | None:
        free = self._settings.max_in_flight - len(self._tasks)
        if free <= 0:
            return None
        request = store_pb2.ClaimDueWorkRequest(
            owner=self._settings.owner,
            limit=min(free, 100),
            lease=duration(self._settings.lease_seconds),
        )
        if self._settings.lookahead_seconds > 0:
            request.horizon.CopyFrom(duration(self._settings.lookahead_seconds))
        try:
            reply = await self._memory.call("", self._memory.workflows.ClaimDueWork, request)
        except AgentmeshError as error:
            _logger.warning("could not claim due work: %s", error)
            return None
        for item in reply.items:
            task = asyncio.create_task(self._handle(item))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        if reply.items and len(reply.items) == free:
            return self._now()  # there may be more: claim again at once
        return reply.next_due_time.ToDatetime(dt.UTC) if reply.HasField("next_due_time") else None

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._woken.set()

    async def _handle(self, item: store_pb2.DueWork) -> None:
        claim = store_pb2.ClaimRef(
            id=item.id, owner=self._settings.owner, claim_epoch=item.claim_epoch
        )
        work = asyncio.create_task(self._at_due_time(item, claim))
        renewer = asyncio.create_task(self._renew(claim, work))
        try:
            await work
        except asyncio.CancelledError:
            work.cancel()
            raise
        except Exception:
            # The claim runs out and another replica (or this one) runs the item again.
            _logger.warning(
                "due work %d failed; it runs again when its claim expires", item.id, exc_info=True
            )
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _at_due_time(self, item: store_pb2.DueWork, claim: store_pb2.ClaimRef) -> None:
        """Run the item at its due time (it may have been claimed up to the lookahead early)."""
        early = (item.due_time.ToDatetime(dt.UTC) - self._now()).total_seconds()
        if early > 0:
            await asyncio.sleep(early)
        self.fired += 1
        await self._handler(item, claim)

    async def _renew(self, claim: store_pb2.ClaimRef, work: asyncio.Task[None]) -> None:
        """Keep the claim while the work runs; if it is lost, stop the work (another replica
        has the item now, and a commit under the lost claim would be refused anyway)."""
        lease = self._settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await self._memory.call(
                    "",
                    self._memory.workflows.RenewDueWork,
                    store_pb2.RenewDueWorkRequest(claim=claim, lease=duration(lease)),
                    deadline_seconds=lease / 3,
                )
            except FailedPrecondition:
                _logger.warning("lost the claim on due work %d; stopping it", claim.id)
                work.cancel()
                return
            except AgentmeshError as error:
                _logger.warning("could not renew the claim on due work %d: %s", claim.id, error)
