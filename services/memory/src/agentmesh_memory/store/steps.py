"""One orchestration step (``CommitStep``) stored in one transaction.

A step is the writes of four RPCs (RecordExecution, AppendMessages, UpdateSession,
AppendEvents), validated and run by the very same code as those RPCs (each store's
``prepare_*``), in that order, inside one write transaction: all of it is stored or none.
Pending approvals are stored just before the events, so an ``approval_requested`` event is
never seen without its approval.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FieldViolation
from agentmesh_memory.names import invalid, invalid_many, parse_session_name

from .approvals import ApprovalStore
from .base import StoreContext, Write
from .events import EventStore
from .ledger import LedgerStore
from .sessions import SessionStore, check_owner
from .work import MessageStore

__all__ = ["StepStore"]

MAX_EXECUTIONS = 1000
PARTS = ("executions", "messages", "update_mask", "approvals", "events")


class StepStore:
    def __init__(
        self,
        context: StoreContext,
        *,
        sessions: SessionStore,
        messages: MessageStore,
        events: EventStore,
        ledger: LedgerStore,
        approvals: ApprovalStore,
    ) -> None:
        self._context = context
        self._sessions = sessions
        self._messages = messages
        self._events = events
        self._ledger = ledger
        self._approvals = approvals

    async def commit(
        self, tenant: str, request: memory_pb2.CommitStepRequest
    ) -> memory_pb2.CommitStepResponse:
        session_id = parse_session_name(request.session, "session")
        name = f"sessions/{session_id}"
        if not (
            request.executions
            or request.messages
            or request.update_mask.paths
            or request.approvals
            or request.events
        ):
            raise invalid_many(
                [FieldViolation(part, "a step must store something") for part in PARTS]
            )
        if request.lease_owner:
            check_owner(request.lease_owner, "lease_owner")
        if len(request.executions) > MAX_EXECUTIONS:
            raise invalid("executions", f"at most {MAX_EXECUTIONS} per step")

        records: list[Write[memory_pb2.RecordExecutionResponse]] = []
        for index, given in enumerate(request.executions):
            field = f"executions[{index}]"
            if given.session and given.session != name:
                raise invalid(f"{field}.session", f"must be empty or {name}")
            execution = memory_pb2.Execution()
            execution.CopyFrom(given)
            execution.session = name
            records.append(self._ledger.prepare_record(tenant, execution, field))
        messages = (
            self._messages.prepare_append(tenant, session_id, request.messages)
            if request.messages
            else None
        )
        if request.update.name and request.update.name != name:
            raise invalid("update.name", f"must be empty or {name}")
        update = (
            self._sessions.prepare_update(
                tenant, session_id, request.update, request.update_mask, "update"
            )
            if request.update_mask.paths
            else None
        )
        pending = (
            self._approvals.prepare_create(tenant, session_id, request.approvals)
            if request.approvals
            else None
        )
        events = (
            self._events.prepare_append(tenant, session_id, request.events)
            if request.events
            else None
        )

        async def commit(conn: AsyncConnection) -> memory_pb2.CommitStepResponse:
            # The row lock comes first: it fences the lease until the commit, and taking it
            # before the inserts (whose foreign keys share-lock the row) avoids a deadlock
            # between two steps of one session on PostgreSQL.
            response = memory_pb2.CommitStepResponse()
            async with self._sessions.locked(
                conn, tenant, session_id, lease_owner=request.lease_owner
            ):
                for record in records:
                    response.executions.append((await record.run(conn)).execution)
                if messages is not None:
                    response.messages.extend((await messages.run(conn)).messages)
                if update is not None:
                    response.session.CopyFrom((await update.run(conn)).session)
                if pending is not None:
                    await pending.run(conn)
                if events is not None:
                    appended = await events.run(conn)
                    response.first_seq, response.last_seq = appended.first_seq, appended.last_seq
            return response

        response = await self._context.idempotent(
            tenant,
            "CommitStep",
            request.request_id,
            request,
            memory_pb2.CommitStepResponse,
            commit,
        )
        if events is not None:
            events.after_commit()
        return response
