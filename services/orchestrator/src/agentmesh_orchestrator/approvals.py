"""Human approval of tool calls: ask, wait for the answer from any replica, or time out.

A call that needs approval (its tool requires it, or the agent's `tool_approval` policy says
so) is announced with `approval_requested`; the pending approval is stored in the same commit
(so nobody sees the event without the approval), and the turn waits. The answer may come
through any replica: `ApproveToolCall` / `RejectToolCall` resolve the approval in the memory
service, which appends `approval_resolved` to the session's log, where the waiting run reads
it (`watch_events`). When nobody answers in time the waiting run resolves it as EXPIRED itself
(losing a race with a late answer is fine: the answer stands).

An approval's id is derived from the turn's idempotency key and the call's place in it, so a
replica that resumes the session after the first one died finds the same approval: answered
meanwhile, its answer is used; still pending, it waits for it (until the same expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from agentmesh.common.v1 import approvals_pb2, events_pb2, messages_pb2, tools_pb2
from agentmesh_common import FailedPrecondition

from .events import EventRecorder
from .ports import SessionStore

_logger = logging.getLogger(__name__)

PENDING = approvals_pb2.APPROVAL_STATE_PENDING
APPROVED = approvals_pb2.APPROVAL_STATE_APPROVED


def approval_id_for(key: str) -> str:
    """A stable approval id for the call `key` names (turn key, model call, position)."""
    return "ap-" + hashlib.sha256(key.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ApprovalRequest:
    """A tool call that needs a human's approval before it runs."""

    key: str  # the call's place: turn idempotency key, model call index, position
    agent: str
    call: messages_pb2.ToolCall
    permission: tools_pb2.ToolPermission.ValueType
    task_id: str = ""


class ApprovalGate:
    """Asks for approvals of one session's tool calls and waits for the answers."""

    def __init__(
        self,
        *,
        store: SessionStore,
        recorder: EventRecorder,
        tenant: str,
        session: str,
        timeout_seconds: float,
        resumed: Callable[[], bool],
        abandoned: Callable[[], bool],
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._tenant = tenant
        self._session = session
        self._timeout = timeout_seconds
        self._resumed = resumed
        self._abandoned = abandoned

    async def decide(self, request: ApprovalRequest) -> approvals_pb2.Approval:
        """The approval of `request` once answered (APPROVED, REJECTED, EXPIRED)."""
        approval_id = approval_id_for(request.key)
        name = f"{self._session}/approvals/{approval_id}"
        # Only a resumed run can meet an approval asked for before (by the replica it replaces).
        known = await self._store.get_approval(self._tenant, name) if self._resumed() else None
        if known is not None and known.state != PENDING:
            return known
        if known is None:
            known = approvals_pb2.Approval(
                name=name,
                approval_id=approval_id,
                agent=request.agent,
                call=request.call,
                permission=request.permission,
                task_id=request.task_id,
                state=PENDING,
            )
            known.create_time.GetCurrentTime()
            known.expire_time.FromDatetime(
                dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._timeout)
            )
            self._recorder.stage_approval(known)
            await self._recorder.emit(
                events_pb2.SessionEvent(
                    agent=request.agent,
                    task_id=request.task_id,
                    approval_requested=events_pb2.ApprovalRequested(approval=known),
                )
            )
        await self._recorder.flush()  # stored (and seen) before anyone can answer it
        try:
            return await self._wait(known)
        except asyncio.CancelledError:
            # The session is being cancelled (or its deadline passed): nobody needs to answer
            # any more. A replica that lost the session leaves it for the next owner.
            if not self._abandoned():
                await asyncio.shield(self._cancel(name))
            raise

    async def _wait(self, approval: approvals_pb2.Approval) -> approvals_pb2.Approval:
        expires = approval.expire_time.ToDatetime(tzinfo=dt.UTC)
        remaining = max((expires - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)
        try:
            async with asyncio.timeout(remaining):
                return await self._answer_of(approval.name)
        except TimeoutError:
            pass
        try:
            return await self._store.resolve_approval(
                self._tenant,
                approval.name,
                approvals_pb2.APPROVAL_STATE_EXPIRED,
                f"no answer within {self._timeout:g} s; the call was not run",
            )
        except FailedPrecondition:  # answered just in time: the answer stands
            answered = await self._store.get_approval(self._tenant, approval.name)
            if answered is None:
                raise
            return answered

    async def _answer_of(self, name: str) -> approvals_pb2.Approval:
        """Wait for the approval_resolved event of `name` in the session's log."""
        events = self._store.watch_events(self._tenant, self._session, self._recorder.last_seq)
        try:
            async for event in events:
                if (
                    event.WhichOneof("payload") == "approval_resolved"
                    and event.approval_resolved.approval.name == name
                ):
                    return event.approval_resolved.approval
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        # The log ended (a terminal event) without an answer: the session is over.
        raise FailedPrecondition(
            f"{self._session} ended while a tool call waited for approval", reason="SESSION_ENDED"
        )

    async def _cancel(self, name: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._store.resolve_approval(
                    self._tenant,
                    name,
                    approvals_pb2.APPROVAL_STATE_CANCELLED,
                    "the turn was stopped (the session was cancelled or interrupted, or its"
                    " deadline passed) while the call waited",
                )
