"""What each WorkflowService and ScheduleService RPC does, for one authenticated tenant.

Definitions are checked here (compiled, and every agent they name must exist) and stored by
the memory service; tokens move through the engine; events and lists pass through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from agentmesh.common.v1 import agents_pb2
from agentmesh.memory.v1 import workflows_pb2 as store_pb2
from agentmesh.workflow.v1 import (
    schedule_pb2,
    workflow_pb2,
    workflow_service_pb2,
)
from agentmesh_common import TENANT_METADATA_KEY, InvalidArgument, NotFound, from_rpc_error
from agentmesh_orchestrator.agents import prepare_agent

from .definition import CompiledWorkflow, compile_workflow
from .engine import Outcome, WorkflowEngine, added_agents_work
from .mapping import BUILT_IN_VARIABLES
from .schedules import RUN_VARIABLES, compile_schedule

GetAgent = Callable[[str, str], Awaitable[agents_pb2.AgentDefinition]]
DEFINITION_FIELDS = (
    "display_name",
    "description",
    "places",
    "initial_place",
    "transitions",
    "place_agents",
)
_OUTPUT_ONLY = ("name", "warnings", "revision", "create_time", "update_time", "last_event_seq")


class WorkflowApp:
    def __init__(self, engine: WorkflowEngine, get_agent: GetAgent) -> None:
        self._engine = engine
        self._memory = engine.memory
        self._store = engine.memory.workflows
        self._get_agent = get_agent

    # -- workflows -----------------------------------------------------------------------

    async def create_workflow(
        self, tenant: str, request: workflow_service_pb2.CreateWorkflowRequest
    ) -> workflow_pb2.Workflow:
        workflow, _ = await self._checked(tenant, request.workflow)
        if request.validate_only:
            return workflow
        reply = await self._memory.call(
            tenant,
            self._store.CreateWorkflowRecord,
            store_pb2.CreateWorkflowRecordRequest(
                workflow=workflow, workflow_id=request.workflow_id, request_id=request.request_id
            ),
        )
        return reply.workflow

    async def get_workflow(self, tenant: str, name: str) -> workflow_pb2.Workflow:
        workflow, _ = await self._engine.load(tenant, name, counts=True)
        return workflow

    async def list_workflows(
        self, tenant: str, request: workflow_service_pb2.ListWorkflowsRequest
    ) -> workflow_service_pb2.ListWorkflowsResponse:
        reply = await self._memory.call(
            tenant,
            self._store.ListWorkflowRecords,
            store_pb2.ListWorkflowRecordsRequest(
                page_size=request.page_size, page_token=request.page_token
            ),
        )
        return workflow_service_pb2.ListWorkflowsResponse(
            workflows=reply.workflows, next_page_token=reply.next_page_token
        )

    async def update_workflow(
        self, tenant: str, request: workflow_service_pb2.UpdateWorkflowRequest
    ) -> workflow_pb2.Workflow:
        paths = list(request.update_mask.paths)
        if not paths or paths == ["*"]:
            paths = list(DEFINITION_FIELDS)
        for index, path in enumerate(paths):
            if path not in DEFINITION_FIELDS:
                raise InvalidArgument.for_field(
                    f"update_mask.paths[{index}]",
                    f"{path!r} cannot be updated; use {', '.join(DEFINITION_FIELDS)} or *",
                )
        current, before = await self._engine.load(tenant, request.workflow.name)
        for path in paths:
            current.ClearField(path)  # type: ignore[arg-type]
            if path in ("places", "transitions", "place_agents"):
                getattr(current, path).extend(getattr(request.workflow, path))
            else:
                setattr(current, path, getattr(request.workflow, path))
        workflow, after = await self._checked(tenant, current)
        workflow.name = request.workflow.name
        arrivals = added_agents_work(before, after, self._engine.now())
        reply = await self._memory.call(
            tenant,
            self._store.UpdateWorkflowRecord,
            store_pb2.UpdateWorkflowRecordRequest(
                workflow=workflow, expected_revision=request.expected_revision, arrivals=arrivals
            ),
        )
        self._engine.wake_for([arrival.work for arrival in arrivals])
        return reply.workflow

    async def delete_workflow(
        self, tenant: str, request: workflow_service_pb2.DeleteWorkflowRequest
    ) -> None:
        await self._memory.call(
            tenant,
            self._store.DeleteWorkflowRecord,
            store_pb2.DeleteWorkflowRecordRequest(name=request.name, force=request.force),
        )

    async def _checked(
        self, tenant: str, given: workflow_pb2.Workflow
    ) -> tuple[workflow_pb2.Workflow, CompiledWorkflow]:
        """The definition to store (output-only fields cleared, warnings set) and its
        compiled form; INVALID_ARGUMENT naming the field for any fault."""
        workflow = workflow_pb2.Workflow()
        workflow.CopyFrom(given)
        for field in _OUTPUT_ONLY:
            workflow.ClearField(field)  # type: ignore[arg-type]
        workflow.token_counts.clear()
        compiled = compile_workflow(workflow)
        workflow.warnings.extend(compiled.warnings)
        for field, execution in _executions(workflow):
            variables = {*BUILT_IN_VARIABLES, *execution.input_mapping}
            await self._check_agent(tenant, execution.agent, field, variables)
        return workflow, compiled

    async def _check_agent(self, tenant: str, name: str, field: str, variables: set[str]) -> None:
        """The agent exists and its templates need no metadata a run will not have."""
        try:
            definition = await self._get_agent(tenant, name)
        except NotFound:
            raise InvalidArgument.for_field(field, f"no agent named {name}") from None
        prepare_agent(definition, field=field, metadata=dict.fromkeys(variables, ""))

    # -- tokens --------------------------------------------------------------------------

    async def create_token(
        self, tenant: str, request: workflow_service_pb2.CreateTokenRequest
    ) -> workflow_pb2.Token:
        return await self._engine.create_token(tenant, request)

    async def get_token(self, tenant: str, name: str) -> workflow_pb2.Token:
        return await self._engine.get_token(tenant, name)

    async def list_tokens(
        self, tenant: str, request: workflow_service_pb2.ListTokensRequest
    ) -> workflow_service_pb2.ListTokensResponse:
        reply = await self._memory.call(
            tenant,
            self._store.ListTokenRecords,
            store_pb2.ListTokenRecordsRequest(
                parent=request.parent,
                place=request.place,
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        return workflow_service_pb2.ListTokensResponse(
            tokens=reply.tokens, next_page_token=reply.next_page_token
        )

    async def fire(
        self, tenant: str, request: workflow_service_pb2.FireTransitionRequest
    ) -> Outcome:
        return await self._engine.fire(tenant, request)

    async def events(
        self, tenant: str, workflow: str, after_seq: int, token: str = ""
    ) -> AsyncIterator[workflow_pb2.WorkflowEvent]:
        """Replay then tail a workflow's (or one token's) events."""
        if after_seq < 0:
            raise InvalidArgument.for_field("after_seq", "must not be negative")
        call = self._store.WatchWorkflowEvents(
            store_pb2.WatchWorkflowEventsRequest(
                workflow=workflow, token=token, after_seq=after_seq
            ),
            metadata=((TENANT_METADATA_KEY, tenant),),
        )
        try:
            async for reply in call:
                for event in reply.events:
                    yield event
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    # -- schedules -----------------------------------------------------------------------

    async def create_schedule(
        self, tenant: str, request: schedule_pb2.CreateScheduleRequest
    ) -> schedule_pb2.Schedule:
        schedule = schedule_pb2.Schedule()
        schedule.CopyFrom(request.schedule)
        for field in ("name", "runs_started", "next_run_time", "create_time"):
            schedule.ClearField(field)
        del schedule.recent_sessions[:]
        compiled = compile_schedule(schedule)
        template = schedule.session_template
        variables = {*template.metadata, *RUN_VARIABLES}
        for index, agent in enumerate(template.agents):
            field = f"schedule.session_template.agents[{index}]"
            await self._check_agent(tenant, agent, field, variables)
        for index, inline in enumerate(template.inline_agents):
            field = f"schedule.session_template.inline_agents[{index}]"
            prepare_agent(inline, field=field, metadata=dict.fromkeys(variables, ""))
        first = compiled.first_due(schedule, self._engine.now())
        request_record = store_pb2.CreateScheduleRecordRequest(
            schedule=schedule, schedule_id=request.schedule_id, request_id=request.request_id
        )
        request_record.first_due_time.FromDatetime(first)
        reply = await self._memory.call(tenant, self._store.CreateScheduleRecord, request_record)
        self._engine.wake_for([store_pb2.DueWork(due_time=request_record.first_due_time)])
        return reply.schedule

    async def get_schedule(self, tenant: str, name: str) -> schedule_pb2.Schedule:
        reply = await self._memory.call(
            tenant, self._store.GetScheduleRecord, store_pb2.GetScheduleRecordRequest(name=name)
        )
        return reply.schedule

    async def list_schedules(
        self, tenant: str, request: schedule_pb2.ListSchedulesRequest
    ) -> schedule_pb2.ListSchedulesResponse:
        reply = await self._memory.call(
            tenant,
            self._store.ListScheduleRecords,
            store_pb2.ListScheduleRecordsRequest(
                page_size=request.page_size, page_token=request.page_token
            ),
        )
        return schedule_pb2.ListSchedulesResponse(
            schedules=reply.schedules, next_page_token=reply.next_page_token
        )

    async def update_schedule(
        self, tenant: str, request: schedule_pb2.UpdateScheduleRequest
    ) -> schedule_pb2.Schedule:
        reply = await self._memory.call(
            tenant,
            self._store.UpdateScheduleRecord,
            store_pb2.UpdateScheduleRecordRequest(
                name=request.schedule.name, paused=request.schedule.paused
            ),
        )
        if not reply.schedule.paused and reply.schedule.HasField("next_run_time"):
            self._engine.wake_for([store_pb2.DueWork(due_time=reply.schedule.next_run_time)])
        return reply.schedule

    async def delete_schedule(self, tenant: str, name: str) -> None:
        await self._memory.call(
            tenant,
            self._store.DeleteScheduleRecord,
            store_pb2.DeleteScheduleRecordRequest(name=name),
        )


def _executions(workflow: workflow_pb2.Workflow) -> list[tuple[str, workflow_pb2.AgentExecution]]:
    found = [
        (f"workflow.transitions[{i}].agent_execution.agent", t.agent_execution)
        for i, t in enumerate(workflow.transitions)
        if t.HasField("agent_execution")
    ]
    found += [
        (f"workflow.place_agents[{i}].execution.agent", a.execution)
        for i, a in enumerate(workflow.place_agents)
    ]
    return found
