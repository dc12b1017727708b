"""A typed async client for the agentmesh public API.

    async with AgentmeshClient("127.0.0.1:50051", api_key="am_...") as mesh:
        session = await mesh.create_session(goal="Plan a picnic", agents=["agents/planner"])
        async for event in mesh.run(session.name):
            print(event.seq, event.WhichOneof("payload"))

Every call sends the API key and has a deadline. Failures raise the typed errors of
`agentmesh_client.errors` (`InvalidArgument` with its field violations, `NotFound`,
`ResourceExhausted` with `retry_after`, a class per common reason such as `SessionNotFound`;
`err.reason` always names the reason). Event streams (`run`, `step`, `execute`,
`events`) survive a dropped connection: they reconnect with `StreamSession(after_seq=<last
seq seen>)`, so the caller sees every event exactly once, in order, until the terminal one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.json_format import ParseDict

from agentmesh.common.v1 import (
    agents_pb2,
    approvals_pb2,
    events_pb2,
    sessions_pb2,
)
from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentmesh.workflow.v1 import schedule_pb2_grpc, workflow_service_pb2_grpc

from .account import AccountCalls, duration
from .knowledge import KnowledgeCalls
from .status import from_rpc_error
from .workflows import WorkflowCalls

T = TypeVar("T")
TERMINAL = frozenset({"session_completed", "session_failed", "session_cancelled"})
RECONNECTABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})


class AgentmeshClient(KnowledgeCalls, WorkflowCalls, AccountCalls):
    """Calls the public API (`OrchestratorService`, `WorkflowService`, `ScheduleService`) with
    an API key."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        reconnect_attempts: int = 8,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._channel = channel or (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        self._stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        self._schedules = schedule_pb2_grpc.ScheduleServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._timeout = timeout
        self._reconnect_attempts = reconnect_attempts

    async def __aenter__(self) -> AgentmeshClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)

    async def _call(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    # -- agents ------------------------------------------------------------------------------

    async def create_agent(
        self, agent_id: str, agent: agents_pb2.AgentDefinition, *, request_id: str | None = None
    ) -> agents_pb2.AgentDefinition:
        """Create `agents/{agent_id}`; a repeat with the same request id returns the first."""
        reply = await self._call(
            self._stub.CreateAgent,
            orchestrator_pb2.CreateAgentRequest(
                agent=agent, agent_id=agent_id, request_id=request_id or uuid.uuid4().hex
            ),
        )
        return reply.agent

    async def get_agent(self, name: str) -> agents_pb2.AgentDefinition:
        reply = await self._call(self._stub.GetAgent, orchestrator_pb2.GetAgentRequest(name=name))
        return reply.agent

    async def list_agents(
        self,
        *,
        type: agents_pb2.AgentType.ValueType = agents_pb2.AGENT_TYPE_UNSPECIFIED,
        page_size: int = 100,
    ) -> AsyncIterator[agents_pb2.AgentDefinition]:
        """Every agent, fetched page by page."""
        token = ""
        while True:
            reply = await self._call(
                self._stub.ListAgents,
                orchestrator_pb2.ListAgentsRequest(
                    page_size=page_size, page_token=token, type=type
                ),
            )
            for agent in reply.agents:
                yield agent
            token = reply.next_page_token
            if not token:
                return

    async def update_agent(
        self, agent: agents_pb2.AgentDefinition, *, fields: Sequence[str] = ()
    ) -> agents_pb2.AgentDefinition:
        reply = await self._call(
            self._stub.UpdateAgent,
            orchestrator_pb2.UpdateAgentRequest(
                agent=agent,
                update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
                request_id=uuid.uuid4().hex,
            ),
        )
        return reply.agent

    async def delete_agent(self, name: str) -> None:
        await self._call(
            self._stub.DeleteAgent,
            orchestrator_pb2.DeleteAgentRequest(name=name, request_id=uuid.uuid4().hex),
        )

    # -- sessions ----------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        goal: str,
        agents: Iterable[str] = (),
        inline_agents: Iterable[agents_pb2.AgentDefinition] = (),
        strategy: sessions_pb2.Strategy.ValueType = sessions_pb2.STRATEGY_UNSPECIFIED,
        limits: sessions_pb2.SessionLimits | None = None,
        termination: sessions_pb2.TerminationCondition | None = None,
        pipeline: sessions_pb2.PipelineSpec | None = None,
        selector: sessions_pb2.SelectorSpec | None = None,
        handoff: sessions_pb2.HandoffSpec | None = None,
        metadata: dict[str, str] | None = None,
        parent: str = "",
        cancel_on_disconnect: bool = False,
        session_id: str = "",
        request_id: str | None = None,
    ) -> sessions_pb2.Session:
        """Create a session (PENDING); run it with `run` or `step`."""
        session = sessions_pb2.Session(
            goal=goal,
            agents=list(agents),
            inline_agents=list(inline_agents),
            strategy=strategy,
            limits=limits,
            termination=termination,
            pipeline=pipeline,
            selector=selector,
            handoff=handoff,
            metadata=metadata or {},
            parent=parent,
            cancel_on_disconnect=cancel_on_disconnect,
        )
        reply = await self._call(
            self._stub.CreateSession,
            orchestrator_pb2.CreateSessionRequest(
                session=session, session_id=session_id, request_id=request_id or uuid.uuid4().hex
            ),
        )
        return reply.session

    async def add_agent(
        self,
        session: str,
        *,
        agent_name: str = "",
        inline: agents_pb2.AgentDefinition | None = None,
    ) -> sessions_pb2.Session:
        request = orchestrator_pb2.AddAgentRequest(session=session, request_id=uuid.uuid4().hex)
        if inline is not None:
            request.inline_agent.CopyFrom(inline)
        else:
            request.agent_name = agent_name
        reply = await self._call(self._stub.AddAgent, request)
        return reply.session

    def run(self, session: str) -> AsyncIterator[events_pb2.SessionEvent]:
        """Run to the end; resumes from the last seq if the connection drops."""
        return self._resumable(
            session,
            lambda: self._stub.Run(
                orchestrator_pb2.RunRequest(session=session, request_id=uuid.uuid4().hex),
                metadata=self._metadata,
            ),
        )

    async def step(self, session: str) -> AsyncIterator[events_pb2.SessionEvent]:
        """One iteration of every agent (events of that step only)."""
        call = self._stub.Step(
            orchestrator_pb2.StepRequest(session=session, request_id=uuid.uuid4().hex),
            metadata=self._metadata,
        )
        try:
            async for reply in call:
                yield reply.event
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def execute(
        self,
        task: str,
        *,
        context: dict[str, object] | None = None,
        agents: Iterable[str] = (),
        inline_agents: Iterable[agents_pb2.AgentDefinition] = (),
        strategy: sessions_pb2.Strategy.ValueType = sessions_pb2.STRATEGY_UNSPECIFIED,
        mode: orchestrator_pb2.ExecutionMode.ValueType = (
            orchestrator_pb2.EXECUTION_MODE_UNSPECIFIED
        ),
        timeout_seconds: float | None = None,
        cancel_on_disconnect: bool = True,
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Create and run a session for `task` in one call."""
        request = orchestrator_pb2.ExecuteRequest(
            task=task,
            agents=list(agents),
            inline_agents=list(inline_agents),
            strategy=strategy,
            mode=mode,
            cancel_on_disconnect=cancel_on_disconnect,
            request_id=uuid.uuid4().hex,
        )
        if context is not None:
            ParseDict(context, request.context)
        if timeout_seconds is not None:
            request.timeout.CopyFrom(duration(timeout_seconds))
        call = self._stub.Execute(request, metadata=self._metadata)
        session = ""
        last = 0
        try:
            async for reply in call:
                session = session or reply.event.session
                last = reply.event.seq
                yield reply.event
                if reply.event.WhichOneof("payload") in TERMINAL:
                    return
        except grpc.aio.AioRpcError as exc:
            if not session or exc.code() not in RECONNECTABLE or cancel_on_disconnect:
                raise from_rpc_error(exc) from None
        if session:
            async for event in self.events(session, after_seq=last):
                yield event

    async def events(
        self, session: str, *, after_seq: int = 0
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Replay a session's events after `after_seq`, then follow it live to its end."""
        async for event in self._resumable(session, None, after_seq=after_seq):
            yield event

    async def _resumable(
        self,
        session: str,
        first_call: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]] | None,
        *,
        after_seq: int = 0,
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        last = after_seq
        attempts = 0
        opener = first_call
        seen_any = False
        while True:
            call = (
                opener()
                if opener is not None
                else self._stub.StreamSession(
                    orchestrator_pb2.StreamSessionRequest(session=session, after_seq=last),
                    metadata=self._metadata,
                )
            )
            opener = None
            try:
                async for reply in call:
                    event: events_pb2.SessionEvent = reply.event
                    if event.seq <= last:
                        continue  # already delivered before a reconnect
                    last = event.seq
                    attempts = 0
                    seen_any = True
                    yield event
                    if event.WhichOneof("payload") in TERMINAL:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                attempts += 1
                if exc.code() not in RECONNECTABLE or attempts > self._reconnect_attempts:
                    raise from_rpc_error(exc) from None
                if first_call is not None and not seen_any:
                    error = from_rpc_error(exc)
                    if error.reason == "REPLICA_DRAINING":  # refused before it started: ask
                        opener = first_call  # again, and another replica runs it
                await asyncio.sleep(min(0.1 * 2**attempts, 5.0))
            finally:
                call.cancel()

    async def send_message(
        self,
        session: str,
        content: str,
        *,
        policy: orchestrator_pb2.BusyPolicy.ValueType = orchestrator_pb2.BUSY_POLICY_ENQUEUE,
    ) -> orchestrator_pb2.SendMessageResponse:
        return await self._call(
            self._stub.SendMessage,
            orchestrator_pb2.SendMessageRequest(
                session=session, content=content, policy=policy, request_id=uuid.uuid4().hex
            ),
        )

    async def cancel_session(self, session: str) -> sessions_pb2.Session:
        reply = await self._call(
            self._stub.CancelSession,
            orchestrator_pb2.CancelSessionRequest(session=session, request_id=uuid.uuid4().hex),
        )
        return reply.session

    async def end_session(self, session: str) -> sessions_pb2.Session:
        reply = await self._call(
            self._stub.EndSession,
            orchestrator_pb2.EndSessionRequest(session=session, request_id=uuid.uuid4().hex),
        )
        return reply.session

    async def approve_tool_call(
        self, session: str, approval_id: str, *, comment: str = "", request_id: str | None = None
    ) -> approvals_pb2.Approval:
        """Approve a tool call waiting for approval (`approval_requested`): it runs."""
        reply = await self._call(
            self._stub.ApproveToolCall,
            orchestrator_pb2.ApproveToolCallRequest(
                session=session,
                approval_id=approval_id,
                comment=comment,
                request_id=request_id or uuid.uuid4().hex,
            ),
        )
        return reply.approval

    async def reject_tool_call(
        self, session: str, approval_id: str, *, comment: str = "", request_id: str | None = None
    ) -> approvals_pb2.Approval:
        """Reject a tool call waiting for approval: it does not run; the model is told why."""
        reply = await self._call(
            self._stub.RejectToolCall,
            orchestrator_pb2.RejectToolCallRequest(
                session=session,
                approval_id=approval_id,
                comment=comment,
                request_id=request_id or uuid.uuid4().hex,
            ),
        )
        return reply.approval

    async def get_session(self, name: str) -> orchestrator_pb2.GetSessionResponse:
        return await self._call(
            self._stub.GetSession, orchestrator_pb2.GetSessionRequest(name=name)
        )

    async def create_stream_token(
        self, session: str, *, ttl_seconds: float | None = None
    ) -> orchestrator_pb2.CreateStreamTokenResponse:
        """A short-lived token that may only stream `session` (for browsers; see the docs)."""
        request = orchestrator_pb2.CreateStreamTokenRequest(session=session)
        if ttl_seconds is not None:
            request.ttl.FromTimedelta(dt.timedelta(seconds=ttl_seconds))
        return await self._call(self._stub.CreateStreamToken, request)

    async def list_sessions(
        self,
        *,
        status: sessions_pb2.SessionStatus.ValueType = sessions_pb2.SESSION_STATUS_UNSPECIFIED,
        parent: str = "",
        page_size: int = 100,
    ) -> AsyncIterator[sessions_pb2.Session]:
        """Sessions, newest first, fetched page by page."""
        token = ""
        while True:
            reply = await self._call(
                self._stub.ListSessions,
                orchestrator_pb2.ListSessionsRequest(
                    page_size=page_size, page_token=token, status=status, parent=parent
                ),
            )
            for session in reply.sessions:
                yield session
            token = reply.next_page_token
            if not token:
                return
