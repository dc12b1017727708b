"""Client calls for workflows (places, transitions, tokens) and schedules. Part of
`AgentmeshClient` (a mixin over its channel's stubs and deadline)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2
from google.protobuf.json_format import ParseDict

from agentmesh.workflow.v1 import (
    schedule_pb2,
    schedule_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

from .status import from_rpc_error

__all__ = ["WorkflowCalls"]

T = TypeVar("T")
FIRE_TIMEOUT = 3600.0  # a transition waits for its agent (at most its attempts' timeouts)
RECONNECTABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})


def _struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    return None if value is None else ParseDict(dict(value), struct_pb2.Struct())


class WorkflowCalls:
    """Workflows, tokens, transitions, their events; schedules."""

    _workflows: workflow_service_pb2_grpc.WorkflowServiceAsyncStub
    _schedules: schedule_pb2_grpc.ScheduleServiceAsyncStub
    _metadata: tuple[tuple[str, str], ...]
    _reconnect_attempts: int
    _call: Callable[..., Awaitable[Any]]

    # -- workflows -----------------------------------------------------------------------

    async def create_workflow(
        self,
        workflow: workflow_pb2.Workflow,
        *,
        workflow_id: str = "",
        validate_only: bool = False,
    ) -> workflow_pb2.Workflow:
        reply = await self._call(
            self._workflows.CreateWorkflow,
            workflow_service_pb2.CreateWorkflowRequest(
                workflow=workflow,
                workflow_id=workflow_id,
                validate_only=validate_only,
                request_id=uuid.uuid4().hex,
            ),
        )
        return reply.workflow  # type: ignore[no-any-return]

    async def get_workflow(self, name: str) -> workflow_pb2.Workflow:
        reply = await self._call(
            self._workflows.GetWorkflow, workflow_service_pb2.GetWorkflowRequest(name=name)
        )
        return reply.workflow  # type: ignore[no-any-return]

    async def list_workflows(self) -> list[workflow_pb2.Workflow]:
        found: list[workflow_pb2.Workflow] = []
        token = ""
        while True:
            reply = await self._call(
                self._workflows.ListWorkflows,
                workflow_service_pb2.ListWorkflowsRequest(page_size=1000, page_token=token),
            )
            found.extend(reply.workflows)
            token = reply.next_page_token
            if not token:
                return found

    async def update_workflow(
        self, workflow: workflow_pb2.Workflow, *, expected_revision: int = 0
    ) -> workflow_pb2.Workflow:
        reply = await self._call(
            self._workflows.UpdateWorkflow,
            workflow_service_pb2.UpdateWorkflowRequest(
                workflow=workflow, expected_revision=expected_revision
            ),
        )
        return reply.workflow  # type: ignore[no-any-return]

    async def delete_workflow(self, name: str, *, force: bool = False) -> None:
        await self._call(
            self._workflows.DeleteWorkflow,
            workflow_service_pb2.DeleteWorkflowRequest(name=name, force=force),
        )

    # -- tokens --------------------------------------------------------------------------

    async def create_token(
        self,
        workflow: str,
        *,
        data: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        place: str = "",
        token_id: str = "",
    ) -> workflow_pb2.Token:
        token = workflow_pb2.Token(place=place, data=_struct(data), metadata=_struct(metadata))
        reply = await self._call(
            self._workflows.CreateToken,
            workflow_service_pb2.CreateTokenRequest(
                parent=workflow, token=token, token_id=token_id, request_id=uuid.uuid4().hex
            ),
        )
        return reply.token  # type: ignore[no-any-return]

    async def get_token(self, name: str) -> workflow_pb2.Token:
        reply = await self._call(
            self._workflows.GetToken, workflow_service_pb2.GetTokenRequest(name=name)
        )
        return reply.token  # type: ignore[no-any-return]

    async def list_tokens(self, workflow: str, *, place: str = "") -> list[workflow_pb2.Token]:
        found: list[workflow_pb2.Token] = []
        token = ""
        while True:
            reply = await self._call(
                self._workflows.ListTokens,
                workflow_service_pb2.ListTokensRequest(
                    parent=workflow, place=place, page_size=1000, page_token=token
                ),
            )
            found.extend(reply.tokens)
            token = reply.next_page_token
            if not token:
                return found

    async def fire_transition(
        self,
        token: str,
        transition: str,
        *,
        data: Mapping[str, Any] | None = None,
        request_id: str = "",
    ) -> workflow_service_pb2.FireTransitionResponse:
        """Fire a transition and wait for its outcome (its agent included). A `request_id`
        (one is made when empty) makes a retry after a lost answer safe."""
        request = workflow_service_pb2.FireTransitionRequest(
            token=token,
            transition=transition,
            data=_struct(data),
            request_id=request_id or uuid.uuid4().hex,
        )
        try:
            reply: workflow_service_pb2.FireTransitionResponse = (
                await self._workflows.FireTransition(
                    request, metadata=self._metadata, timeout=FIRE_TIMEOUT
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return reply

    async def workflow_events(
        self, workflow: str, *, after_seq: int = 0, token: str = ""
    ) -> AsyncIterator[workflow_pb2.WorkflowEvent]:
        """A workflow's (or one token's) events after `after_seq`, then live ones, forever;
        a dropped connection is resumed after the last event seen."""
        last = after_seq
        attempts = 0
        while True:
            call = (
                self._workflows.StreamToken(
                    workflow_service_pb2.StreamTokenRequest(token=token, after_seq=last),
                    metadata=self._metadata,
                )
                if token
                else self._workflows.StreamWorkflow(
                    workflow_service_pb2.StreamWorkflowRequest(workflow=workflow, after_seq=last),
                    metadata=self._metadata,
                )
            )
            try:
                async for reply in call:
                    event: workflow_pb2.WorkflowEvent = reply.event
                    if event.seq <= last:
                        continue
                    last = event.seq
                    attempts = 0
                    yield event
                return
            except grpc.aio.AioRpcError as exc:
                attempts += 1
                if exc.code() not in RECONNECTABLE or attempts > self._reconnect_attempts:
                    raise from_rpc_error(exc) from None
                await asyncio.sleep(min(0.1 * 2**attempts, 5.0))
            finally:
                call.cancel()

    # -- schedules -----------------------------------------------------------------------

    async def create_schedule(
        self, schedule: schedule_pb2.Schedule, *, schedule_id: str = ""
    ) -> schedule_pb2.Schedule:
        reply = await self._call(
            self._schedules.CreateSchedule,
            schedule_pb2.CreateScheduleRequest(
                schedule=schedule, schedule_id=schedule_id, request_id=uuid.uuid4().hex
            ),
        )
        return reply.schedule  # type: ignore[no-any-return]

    async def get_schedule(self, name: str) -> schedule_pb2.Schedule:
        reply = await self._call(
            self._schedules.GetSchedule, schedule_pb2.GetScheduleRequest(name=name)
        )
        return reply.schedule  # type: ignore[no-any-return]

    async def list_schedules(self) -> list[schedule_pb2.Schedule]:
        found: list[schedule_pb2.Schedule] = []
        token = ""
        while True:
            reply = await self._call(
                self._schedules.ListSchedules,
                schedule_pb2.ListSchedulesRequest(page_size=1000, page_token=token),
            )
            found.extend(reply.schedules)
            token = reply.next_page_token
            if not token:
                return found

    async def set_schedule_paused(self, name: str, paused: bool) -> schedule_pb2.Schedule:
        reply = await self._call(
            self._schedules.UpdateSchedule,
            schedule_pb2.UpdateScheduleRequest(
                schedule=schedule_pb2.Schedule(name=name, paused=paused)
            ),
        )
        return reply.schedule  # type: ignore[no-any-return]

    async def delete_schedule(self, name: str) -> None:
        await self._call(
            self._schedules.DeleteSchedule, schedule_pb2.DeleteScheduleRequest(name=name)
        )
