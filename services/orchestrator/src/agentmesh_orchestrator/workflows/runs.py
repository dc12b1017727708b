"""One agent run against a token: a session of that one agent, named by a request id so a
repeat (a retry of the same attempt, another replica after a crash) finds the same session
instead of starting a second.

The run's goal is the execution's goal template filled with the run's variables (the input
mapping's and the built-in ones); the variables are also the session's metadata, so the agent's
own templates can use them as `{metadata.NAME}`. The attempt's time limit is the session's
deadline. Its final answer is the run's text; when that text is a JSON object (an agent with a
response schema), it is the structured output the output mapping reads.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from google.rpc import code_pb2, status_pb2

from agentmesh.common.v1 import events_pb2, generation_pb2, sessions_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2
from agentmesh.workflow.v1 import workflow_pb2
from agentmesh_client.errors import SessionExists
from agentmesh_common import AgentmeshError, to_rpc_status

from .definition import Execution, render_goal
from .mapping import RunResult, TokenView, input_variables
from .rules import Json

ERROR_DOMAIN = "agentmesh.orchestrator"
RETRY_ON_BY_CODE: dict[int, workflow_pb2.RetryOn.ValueType] = {
    code_pb2.DEADLINE_EXCEEDED: workflow_pb2.RETRY_ON_TIMEOUT,
    code_pb2.RESOURCE_EXHAUSTED: workflow_pb2.RETRY_ON_RATE_LIMIT,
    code_pb2.UNAVAILABLE: workflow_pb2.RETRY_ON_UNAVAILABLE,
}


class SessionRunner(Protocol):
    """What a run needs of the orchestrator (OrchestratorApp)."""

    async def create_session(
        self,
        tenant: str,
        request: orchestrator_pb2.CreateSessionRequest,
        *,
        generation: Mapping[str, generation_pb2.GenerationConfig] | None = None,
    ) -> sessions_pb2.Session: ...

    def run_to_end(
        self, tenant: str, created: sessions_pb2.Session
    ) -> AsyncIterator[events_pb2.SessionEvent]: ...

    async def get_session(self, tenant: str, name: str) -> orchestrator_pb2.GetSessionResponse: ...


async def create_or_find(
    runner: SessionRunner,
    tenant: str,
    request: orchestrator_pb2.CreateSessionRequest,
    *,
    generation: Mapping[str, generation_pb2.GenerationConfig] | None = None,
) -> sessions_pb2.Session:
    """The session named `request.session_id`: created now, or, when an earlier try (another
    replica's, before it died) created it, that one. A name, not a request id, makes the
    repeat find it: the repeat's request differs (a later deadline), so a request id would be
    refused as reused."""
    try:
        return await runner.create_session(tenant, request, generation=generation)
    except SessionExists:
        found = await runner.get_session(tenant, f"sessions/{request.session_id}")
        return found.session


@dataclass(frozen=True)
class Attempt:
    """How one attempt ended: `result` when it succeeded, else `status` says why."""

    session: str
    status: status_pb2.Status
    usage: generation_pb2.Usage
    result: RunResult | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def failure(self) -> workflow_pb2.RetryOn.ValueType:
        return RETRY_ON_BY_CODE.get(self.status.code, workflow_pb2.RETRY_ON_FAILED)

    def retryable(self, execution: Execution, attempt: int) -> bool:
        return (
            not self.ok
            and attempt < execution.retry.max_attempts
            and self.failure in execution.retry.retry_on
        )


async def run_attempt(
    runner: SessionRunner,
    tenant: str,
    execution: Execution,
    token: TokenView,
    *,
    request_id: str,
    generation: generation_pb2.GenerationConfig | None = None,
) -> Attempt:
    """Run (or find, by `request_id`) one attempt and wait for its end."""
    variables = input_variables(execution.input_mapping, token)
    session = sessions_pb2.Session(
        goal=render_goal(execution.goal, variables),
        agents=[execution.agent],
        strategy=sessions_pb2.STRATEGY_PIPELINE,
        metadata=variables,
    )
    session.limits.deadline.FromDatetime(dt.datetime.now(dt.UTC) + execution.timeout)
    overrides = {execution.agent: generation} if generation is not None else None
    try:
        created = await create_or_find(
            runner,
            tenant,
            orchestrator_pb2.CreateSessionRequest(session=session, session_id=request_id),
            generation=overrides,
        )
    except AgentmeshError as error:
        return Attempt(
            session="", status=to_rpc_status(error, ERROR_DOMAIN), usage=generation_pb2.Usage()
        )
    terminal = None
    async for event in runner.run_to_end(tenant, created):
        if event.WhichOneof("payload") in (
            "session_completed",
            "session_failed",
            "session_cancelled",
        ):
            terminal = event
            break
    return _ended(execution, created.name, terminal)


def _ended(execution: Execution, session: str, event: events_pb2.SessionEvent | None) -> Attempt:
    if event is None:
        status = status_pb2.Status(
            code=code_pb2.UNAVAILABLE, message=f"{session} ended without a terminal event"
        )
        return Attempt(session=session, status=status, usage=generation_pb2.Usage())
    kind = event.WhichOneof("payload")
    if kind == "session_completed":
        done = event.session_completed
        result = RunResult(
            agent_id=execution.agent,
            session_id=session,
            text=done.final_answer,
            finished_at=event.time.ToDatetime(dt.UTC),
            output=_structured(done.final_answer),
        )
        return Attempt(session=session, status=status_pb2.Status(), usage=done.usage, result=result)
    if kind == "session_failed":
        failed = event.session_failed
        return Attempt(session=session, status=failed.error, usage=failed.usage)
    cancelled = event.session_cancelled
    code = code_pb2.DEADLINE_EXCEEDED if cancelled.reason == "deadline" else code_pb2.CANCELLED
    status = status_pb2.Status(
        code=code, message=f"the agent's session was cancelled ({cancelled.reason})"
    )
    return Attempt(session=session, status=status, usage=cancelled.usage)


def _structured(text: str) -> dict[str, Json] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
