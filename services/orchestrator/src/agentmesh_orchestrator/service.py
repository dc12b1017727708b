"""The public API's logic: what each Orchestrator RPC does, for one authenticated tenant.

Agents live in the catalog (agent_catalog.py). A session keeps a snapshot of its agents'
definitions (in `inline_agents`) taken when it is created or an agent is added, so editing or
deleting an agent later never changes a team that is already at work. Inputs are bounded and a
bad one is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from google.protobuf.json_format import MessageToDict

from agentmesh.common.v1 import (
    agents_pb2,
    approvals_pb2,
    events_pb2,
    generation_pb2,
    messages_pb2,
    sessions_pb2,
)
from agentmesh.memory.v1 import memory_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2
from agentmesh_common import (
    FailedPrecondition,
)

from .adapters.memory_client import MemoryClient
from .admission import Slot
from .agent_catalog import AgentCatalog, inline_agent, invalid
from .agents import prepare_agent
from .sessions import TERMINAL_EVENTS, SessionManager
from .strategies import validate_session
from .stream_tokens import DEFAULT_TTL, MAX_TTL, MIN_TTL, StreamTokens

SESSION_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
APPROVAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
MAX_COMMENT_CHARS = 4000
MAX_APPROVAL_TIMEOUT = dt.timedelta(days=7)
MAX_EXECUTE_TIMEOUT = dt.timedelta(days=30)
ENDED = frozenset(
    {
        sessions_pb2.SESSION_STATUS_COMPLETED,
        sessions_pb2.SESSION_STATUS_FAILED,
        sessions_pb2.SESSION_STATUS_CANCELLED,
    }
)


@dataclass(frozen=True)
class Bounds:
    """Limits on what one request may ask for."""

    max_goal_chars: int = 20_000
    max_message_chars: int = 20_000
    max_agents_per_session: int = 16
    max_rounds: int = 100
    max_plan_tasks: int = 50
    max_parallel_tasks: int = 16


class OrchestratorApp:
    """Implements the public RPCs for a tenant; the servicer only converts and authenticates."""

    def __init__(
        self, *, memory: MemoryClient, manager: SessionManager, bounds: Bounds | None = None
    ) -> None:
        self._memory = memory
        self._manager = manager
        self._bounds = bounds or Bounds()
        self._agents = AgentCatalog(memory)

    # -- agents (the catalog in agent_catalog.py) --------------------------------------------

    async def create_agent(
        self, tenant: str, request: orchestrator_pb2.CreateAgentRequest
    ) -> agents_pb2.AgentDefinition:
        return await self._agents.create(tenant, request)

    async def update_agent(
        self, tenant: str, request: orchestrator_pb2.UpdateAgentRequest
    ) -> agents_pb2.AgentDefinition:
        return await self._agents.update(tenant, request)

    async def get_agent(self, tenant: str, name: str) -> agents_pb2.AgentDefinition:
        return await self._agents.get(tenant, name)

    # -- sessions ----------------------------------------------------------------------------

    async def create_session(
        self,
        tenant: str,
        request: orchestrator_pb2.CreateSessionRequest,
        *,
        generation: Mapping[str, generation_pb2.GenerationConfig] | None = None,
    ) -> sessions_pb2.Session:
        """Check and store a session. `generation` overrides settings of named members in the
        session's snapshot (a workflow's place agent); a field set there wins."""
        draft = request.session
        bounds = self._bounds
        if not draft.goal.strip():
            raise invalid("session.goal", "required")
        if len(draft.goal) > bounds.max_goal_chars:
            raise invalid("session.goal", f"at most {bounds.max_goal_chars} characters")
        if request.session_id and not SESSION_ID.fullmatch(request.session_id):
            raise invalid("session_id", "must match [a-z0-9][a-z0-9-]{0,62}")
        members = len(draft.agents) + len(draft.inline_agents)
        if members > bounds.max_agents_per_session:
            raise invalid("session.agents", f"at most {bounds.max_agents_per_session} agents")
        self._check_limits(draft.limits, "session.limits")
        if draft.parent:
            await self._memory.get_session(tenant, draft.parent)
        session = sessions_pb2.Session()
        session.CopyFrom(draft)
        if session.strategy == sessions_pb2.STRATEGY_UNSPECIFIED:
            session.strategy = sessions_pb2.STRATEGY_ROUND_ROBIN
        agents = await self._agents.snapshot(tenant, session)
        for agent in agents:
            if generation and agent.name in generation:
                agent.definition.generation.MergeFrom(generation[agent.name])
        validate_session(session, agents)
        del session.agents[:]
        session.agents.extend(a.name for a in agents)
        del session.inline_agents[:]
        session.inline_agents.extend(a.definition for a in agents)
        reply = await self._memory.call(
            tenant,
            self._memory.stub.CreateSession,
            memory_pb2.CreateSessionRequest(
                session=session, session_id=request.session_id, request_id=request.request_id
            ),
        )
        return reply.session

    async def add_agent(
        self, tenant: str, request: orchestrator_pb2.AddAgentRequest
    ) -> sessions_pb2.Session:
        session = await self._memory.get_session(tenant, request.session)
        if session.status not in (
            sessions_pb2.SESSION_STATUS_PENDING,
            sessions_pb2.SESSION_STATUS_RUNNING,
        ):
            raise FailedPrecondition(f"{request.session} has ended", reason="SESSION_ENDED")
        if len(session.inline_agents) >= self._bounds.max_agents_per_session:
            raise invalid("session", f"at most {self._bounds.max_agents_per_session} agents")
        if request.WhichOneof("agent") == "agent_name":
            definition = await self.get_agent(tenant, request.agent_name)
            field = "agent_name"
        elif request.WhichOneof("agent") == "inline_agent":
            field = "inline_agent"
            definition = inline_agent(request.inline_agent, field)
        else:
            raise invalid("agent", "set agent_name or inline_agent")
        agent = prepare_agent(definition, field=field, metadata=session.metadata)
        if any(a.name == agent.name for a in session.inline_agents):
            raise invalid(field, f"{agent.name} is already a member")
        session.agents.append(agent.name)
        session.inline_agents.append(agent.definition)
        stored = await self._memory.update_session(tenant, session, ["agents", "inline_agents"])
        await self._memory.append_events(
            tenant,
            session.name,
            [
                events_pb2.SessionEvent(
                    session=session.name,
                    agent=agent.name,
                    agent_spawned=events_pb2.AgentSpawned(definition=agent.definition),
                )
            ],
        )
        return stored

    def run(
        self, tenant: str, session: str, *, single_step: bool = False
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        return self._manager.run(tenant, session, single_step=single_step)

    async def execute(
        self, tenant: str, request: orchestrator_pb2.ExecuteRequest
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        if not request.task.strip():
            raise invalid("task", "required")
        session = sessions_pb2.Session(
            goal=request.task,
            agents=request.agents,
            inline_agents=request.inline_agents,
            strategy=request.strategy,
            limits=request.limits,
            metadata=request.metadata,
            cancel_on_disconnect=(
                request.cancel_on_disconnect if request.HasField("cancel_on_disconnect") else True
            ),
        )
        if request.HasField("context"):
            session.metadata["context"] = json.dumps(MessageToDict(request.context))
        if session.strategy == sessions_pb2.STRATEGY_UNSPECIFIED:
            if request.mode != orchestrator_pb2.EXECUTION_MODE_UNSPECIFIED and (
                request.agents or request.inline_agents
            ):
                session.strategy = sessions_pb2.STRATEGY_PIPELINE
                session.pipeline.parallel = request.mode == orchestrator_pb2.EXECUTION_MODE_PARALLEL
            else:
                session.strategy = sessions_pb2.STRATEGY_ROUTER
        if request.HasField("timeout"):
            if not dt.timedelta(0) < request.timeout.ToTimedelta() <= MAX_EXECUTE_TIMEOUT:
                raise invalid("timeout", "must be positive and at most 30 days")
            deadline = dt.datetime.now(dt.UTC) + request.timeout.ToTimedelta()
            session.limits.deadline.FromDatetime(deadline)
        slot = await self._manager.admit()  # refused before the session is even stored
        try:
            created = await self.create_session(
                tenant,
                orchestrator_pb2.CreateSessionRequest(
                    session=session, request_id=request.request_id
                ),
            )
        except BaseException:
            slot.release()
            raise
        async for event in self.run_to_end(tenant, created, admitted=slot):
            yield event

    async def run_to_end(
        self, tenant: str, created: sessions_pb2.Session, *, admitted: Slot | None = None
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Run a just-created session, or, when a repeated request found it created already,
        show that first run instead of running again. `admitted`: a slot already taken."""
        if created.status == sessions_pb2.SESSION_STATUS_PENDING and not self._manager.is_running(
            tenant, created.name
        ):
            async for event in self._manager.run(tenant, created.name, admitted=admitted):
                yield event
            return
        if admitted is not None:
            admitted.release()
        # A repeated request: show the first execution instead of running again.
        async for event in self._manager.stream(tenant, created.name, 0):
            yield event
            if event.WhichOneof("payload") in TERMINAL_EVENTS:
                return

    async def open_stream(
        self, tenant: str, request: orchestrator_pb2.StreamSessionRequest
    ) -> AsyncIterator[events_pb2.SessionEvent] | None:
        """Check the request, then return the session's events (replay, then tail); None
        when the session has ended and nothing is left after ``after_seq``."""
        if request.after_seq < 0:
            raise invalid("after_seq", "must not be negative")
        session = await self._memory.get_session(tenant, request.session)  # NOT_FOUND: strangers
        if session.status in ENDED and request.after_seq >= session.last_event_seq:
            return None
        return self._manager.stream(tenant, request.session, request.after_seq)

    async def send_message(
        self, tenant: str, request: orchestrator_pb2.SendMessageRequest
    ) -> orchestrator_pb2.SendMessageResponse:
        if not request.content.strip():
            raise invalid("content", "required")
        if len(request.content) > self._bounds.max_message_chars:
            raise invalid("content", f"at most {self._bounds.max_message_chars} characters")
        session = await self._memory.get_session(tenant, request.session)
        if session.status not in (
            sessions_pb2.SESSION_STATUS_PENDING,
            sessions_pb2.SESSION_STATUS_RUNNING,
        ):
            raise FailedPrecondition(f"{request.session} has ended", reason="SESSION_ENDED")
        disposition = await self._manager.send_message(
            tenant,
            request.session,
            request.content,
            interrupt=request.policy == orchestrator_pb2.BUSY_POLICY_INTERRUPT,
            reject_if_busy=request.policy == orchestrator_pb2.BUSY_POLICY_REJECT,
        )
        return orchestrator_pb2.SendMessageResponse(
            disposition=orchestrator_pb2.MessageDisposition.Value(
                f"MESSAGE_DISPOSITION_{disposition}"
            )
        )

    async def cancel_session(self, tenant: str, name: str) -> sessions_pb2.Session:
        session = await self._memory.get_session(tenant, name)
        if session.status in ENDED:
            return session
        if await self._manager.cancel(tenant, name):
            return await self._memory.get_session(tenant, name)
        if session.status == sessions_pb2.SESSION_STATUS_RUNNING and session.lease_owner:
            raise FailedPrecondition(
                f"{name} is running on replica {session.lease_owner}; cancel it there",
                reason="SESSION_RUNNING_ELSEWHERE",
            )
        return await self._end_idle(
            tenant,
            session,
            events_pb2.SessionEvent(
                session_cancelled=events_pb2.SessionCancelled(
                    reason="cancel_session", usage=session.usage
                )
            ),
            sessions_pb2.SESSION_STATUS_CANCELLED,
        )

    async def end_session(self, tenant: str, name: str) -> sessions_pb2.Session:
        session = await self._memory.get_session(tenant, name)
        if session.status == sessions_pb2.SESSION_STATUS_COMPLETED:
            return session
        if session.status not in (
            sessions_pb2.SESSION_STATUS_PENDING,
            sessions_pb2.SESSION_STATUS_RUNNING,
        ):
            raise FailedPrecondition(f"{name} has already ended", reason="SESSION_ENDED")
        if self._manager.is_running(tenant, name):
            raise FailedPrecondition(
                f"{name} is running; cancel it or wait for the run to finish",
                reason="SESSION_BUSY",
            )
        answer = ""
        for item in reversed(await self._memory.recent_messages(tenant, name, 20)):
            if item.message.role == messages_pb2.ROLE_ASSISTANT and item.message.content:
                answer = item.message.content
                break
        session.final_answer = answer
        return await self._end_idle(
            tenant,
            session,
            events_pb2.SessionEvent(
                session_completed=events_pb2.SessionCompleted(
                    final_answer=answer, usage=session.usage, termination_reason="ended"
                )
            ),
            sessions_pb2.SESSION_STATUS_COMPLETED,
        )

    async def create_stream_token(
        self,
        tenant: str,
        request: orchestrator_pb2.CreateStreamTokenRequest,
        tokens: StreamTokens,
    ) -> orchestrator_pb2.CreateStreamTokenResponse:
        if not request.session:
            raise invalid("session", "the session to stream is required")
        ttl = DEFAULT_TTL
        if request.HasField("ttl"):
            seconds = request.ttl.seconds + request.ttl.nanos / 1e9
            if not MIN_TTL.total_seconds() <= seconds <= MAX_TTL.total_seconds():
                raise invalid("ttl", "must be between 1 second and 1 hour")
            ttl = dt.timedelta(seconds=seconds)
        session = await self._memory.get_session(tenant, request.session)  # NOT_FOUND: strangers
        token, expires = tokens.issue(tenant, session.name, ttl)
        response = orchestrator_pb2.CreateStreamTokenResponse(token=token)
        response.expire_time.FromDatetime(expires)
        return response

    async def get_session(self, tenant: str, name: str) -> orchestrator_pb2.GetSessionResponse:
        session = await self._memory.get_session(tenant, name)
        tasks = await self._memory.call(
            tenant,
            self._memory.stub.ListTasks,
            memory_pb2.ListTasksRequest(parent=name, page_size=1000),
        )
        children = await self._memory.call(
            tenant,
            self._memory.stub.ListSessions,
            memory_pb2.ListSessionsRequest(parent=name, page_size=1000),
        )
        addressed = await self._memory.call(
            tenant,
            self._memory.stub.ListMessages,
            memory_pb2.ListMessagesRequest(
                parent=name, newest=200, audience=memory_pb2.MESSAGE_AUDIENCE_ADDRESSED
            ),
        )
        return orchestrator_pb2.GetSessionResponse(
            session=session,
            agents=[*session.inline_agents, *session.builtin_agents],
            tasks=tasks.tasks,
            children=[child.name for child in children.sessions],
            pending_approvals=await self._memory.pending_approvals(tenant, name),
            agent_messages=[
                events_pb2.AgentMessage(
                    message=item.name,
                    from_agent=item.agent,
                    to_agents=item.recipients,
                    type=item.type,
                    content=item.message.content,
                )
                for item in addressed.messages
            ],
        )

    # -- approvals ---------------------------------------------------------------------------

    async def answer_tool_call(
        self,
        tenant: str,
        request: orchestrator_pb2.ApproveToolCallRequest | orchestrator_pb2.RejectToolCallRequest,
        *,
        approve: bool,
    ) -> approvals_pb2.Approval:
        """Approve or reject a tool call waiting in a session (on any replica): the memory
        service records the answer with its approval_resolved event, where the session's
        replica (or the one that takes it over) reads it and goes on."""
        if not request.session.startswith("sessions/") or not SESSION_ID.fullmatch(
            request.session.removeprefix("sessions/")
        ):
            raise invalid("session", "must be sessions/{session_id}")
        if not APPROVAL_ID.fullmatch(request.approval_id):
            raise invalid("approval_id", "required: the id from approval_requested")
        if len(request.comment) > MAX_COMMENT_CHARS:
            raise invalid("comment", f"at most {MAX_COMMENT_CHARS} characters")
        state = (
            approvals_pb2.APPROVAL_STATE_APPROVED
            if approve
            else approvals_pb2.APPROVAL_STATE_REJECTED
        )
        return await self._memory.resolve_approval(
            tenant,
            f"{request.session}/approvals/{request.approval_id}",
            state,
            request.comment,
            request_id=request.request_id,
        )

    # -- helpers -----------------------------------------------------------------------------

    def _check_limits(self, limits: sessions_pb2.SessionLimits, field: str) -> None:
        bounds = self._bounds
        checks = [
            ("max_rounds", limits.max_rounds, bounds.max_rounds),
            ("max_plan_tasks", limits.max_plan_tasks, bounds.max_plan_tasks),
            ("max_parallel_tasks", limits.max_parallel_tasks, bounds.max_parallel_tasks),
            ("max_task_retries", limits.max_task_retries, 10),
        ]
        for name, value, most in checks:
            if value < 0 or value > most:
                raise invalid(f"{field}.{name}", f"must be between 0 and {most}")
        if limits.max_total_tokens < 0:
            raise invalid(f"{field}.max_total_tokens", "must not be negative")
        timeout = limits.approval_timeout.ToTimedelta()
        if timeout < dt.timedelta(0) or timeout > MAX_APPROVAL_TIMEOUT:
            raise invalid(f"{field}.approval_timeout", "must be between 0 and 7 days")

    async def _end_idle(
        self,
        tenant: str,
        session: sessions_pb2.Session,
        terminal: events_pb2.SessionEvent,
        status: sessions_pb2.SessionStatus.ValueType,
    ) -> sessions_pb2.Session:
        if session.status == sessions_pb2.SESSION_STATUS_PENDING and (
            status == sessions_pb2.SESSION_STATUS_COMPLETED
        ):
            session.status = sessions_pb2.SESSION_STATUS_RUNNING
            await self._memory.update_session(tenant, session, ["status"])
        lease = await self._memory.acquire_lease(
            tenant, session.name, f"end-{uuid.uuid4().hex}", 30
        )
        try:
            terminal.session = session.name
            terminal.time.GetCurrentTime()
            await self._memory.append_events(tenant, session.name, [terminal])
            session.status = status
            return await self._memory.update_session(tenant, session, ["status", "final_answer"])
        finally:
            await self._memory.release_lease(tenant, session.name, lease.lease.owner)
