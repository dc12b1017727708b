"""Moving tokens: creating them, firing transitions (with their agents), and the place-agent
work a token's arrival in a place schedules.

A transition fires in one commit of the memory service: the token's move, its new data and
metadata, its history entry, the events and the due work of its new place (or, for a failed
transition, the failure event) are written together, at the revision the token had when the
transition began, so a crash never leaves a token half-moved and two concurrent fires cannot
both move it (the second is ABORTED). A FireTransition `request_id` makes the call idempotent:
its outcome is remembered in that commit, and a repeat answers with it.

Agent runs are idempotent too: each attempt's session is named by a key derived from the token,
the transition and the call, so a retried call finds the session of the first instead of
paying for another.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict
from google.rpc import code_pb2, status_pb2

from agentmesh.memory.v1 import workflows_pb2 as store_pb2
from agentmesh.workflow.v1 import workflow_pb2, workflow_service_pb2
from agentmesh_common import FailedPrecondition, InvalidArgument
from agentmesh_orchestrator.adapters.memory_client import MemoryClient

from .definition import (
    CompiledPlaceAgent,
    CompiledTransition,
    CompiledWorkflow,
    compile_workflow,
)
from .mapping import MappingError, TokenChanges, TokenView, apply_output
from .rules import Json
from .runs import Attempt, SessionRunner, run_attempt

Wake = Callable[[dt.datetime], None]
_CACHE_SIZE = 256


class TransitionNotEnabled(FailedPrecondition):
    default_reason = "TRANSITION_NOT_ENABLED"


class RulesNotMet(FailedPrecondition):
    default_reason = "TRANSITION_RULES_NOT_MET"


@dataclass(frozen=True)
class Outcome:
    """What firing did: the token after it, whether it moved, the last event's seq."""

    token: workflow_pb2.Token
    fired: bool
    event_seq: int


def workflow_of(token_name: str) -> str:
    return "/".join(token_name.split("/")[:2])


def run_key(*parts: object) -> str:
    """A request id for an agent run's session, the same for the same attempt everywhere."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return f"wf-{digest[:40]}"


def token_view(token: workflow_pb2.Token) -> TokenView:
    parts = token.name.split("/")
    return TokenView(
        workflow_id=parts[1] if len(parts) > 1 else "",
        token_id=parts[3] if len(parts) > 3 else "",
        place=token.place,
        data=_as_dict(token.data),
        metadata=_as_dict(token.metadata),
        history_count=len(token.history),
    )


def _as_dict(value: struct_pb2.Struct) -> dict[str, Json]:
    converted: dict[str, Json] = MessageToDict(value)
    return converted


def to_struct(value: Mapping[str, Json]) -> struct_pb2.Struct:
    return ParseDict(dict(value), struct_pb2.Struct())


class WorkflowEngine:
    """Tokens and transitions over the memory service's workflow store."""

    def __init__(
        self,
        memory: MemoryClient,
        runner: SessionRunner,
        *,
        wake: Wake | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.memory = memory
        self.store = memory.workflows
        self.runner = runner
        self.now = now
        self._wake = wake or (lambda _at: None)
        self._sleep = sleep
        self._compiled: OrderedDict[tuple[str, str, int], CompiledWorkflow] = OrderedDict()

    def set_wake(self, wake: Wake) -> None:
        self._wake = wake

    # -- definitions ---------------------------------------------------------------------

    async def load(
        self, tenant: str, name: str, *, counts: bool = False
    ) -> tuple[workflow_pb2.Workflow, CompiledWorkflow]:
        reply = await self.memory.call(
            tenant,
            self.store.GetWorkflowRecord,
            store_pb2.GetWorkflowRecordRequest(name=name, with_token_counts=counts),
        )
        return reply.workflow, self.compiled(tenant, reply.workflow)

    def compiled(self, tenant: str, workflow: workflow_pb2.Workflow) -> CompiledWorkflow:
        """The workflow compiled, once per revision."""
        key = (tenant, workflow.name, workflow.revision)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = compile_workflow(workflow)
            self._compiled[key] = compiled
            while len(self._compiled) > _CACHE_SIZE:
                self._compiled.popitem(last=False)
        return compiled

    # -- tokens --------------------------------------------------------------------------

    async def create_token(
        self, tenant: str, request: workflow_service_pb2.CreateTokenRequest
    ) -> workflow_pb2.Token:
        _, compiled = await self.load(tenant, request.parent)
        token = workflow_pb2.Token()
        token.CopyFrom(request.token)
        token.place = token.place or compiled.initial_place
        if token.place not in compiled.places:
            raise InvalidArgument.for_field("token.place", f"no place {token.place!r}")
        now = self.now()
        work = self.arrival_work(compiled, token.place, stay_revision=1, now=now)
        reply = await self.memory.call(
            tenant,
            self.store.CreateTokenRecord,
            store_pb2.CreateTokenRecordRequest(
                parent=request.parent,
                token=token,
                token_id=request.token_id,
                request_id=request.request_id,
                events=[
                    workflow_pb2.WorkflowEvent(
                        token_created=workflow_pb2.TokenCreated(place=token.place)
                    )
                ],
                schedule=work,
            ),
        )
        self.wake_for(work)
        return reply.token

    async def token_and_workflow(
        self, tenant: str, name: str
    ) -> tuple[workflow_pb2.Token, CompiledWorkflow]:
        """A token and its workflow, compiled, in one read."""
        read = await self.memory.call(
            tenant,
            self.store.GetTokenRecord,
            store_pb2.GetTokenRecordRequest(name=name, with_workflow=True),
        )
        return read.token, self.compiled(tenant, read.workflow)

    async def get_token(self, tenant: str, name: str) -> workflow_pb2.Token:
        reply = await self.memory.call(
            tenant, self.store.GetTokenRecord, store_pb2.GetTokenRecordRequest(name=name)
        )
        return reply.token

    def arrival_work(
        self, compiled: CompiledWorkflow, place: str, *, stay_revision: int, now: dt.datetime
    ) -> list[store_pb2.DueWork]:
        """The due work of a token arriving in `place`: each place agent's first run."""
        return [_first_run(agent, stay_revision, now) for agent in compiled.agents_at(place)]

    def wake_for(self, work: Sequence[store_pb2.DueWork]) -> None:
        if work:
            self._wake(min(item.due_time.ToDatetime(dt.UTC) for item in work))

    # -- firing --------------------------------------------------------------------------

    async def fire(
        self, tenant: str, request: workflow_service_pb2.FireTransitionRequest
    ) -> Outcome:
        """FireTransition: check, run the agent, commit the move (or the failure).

        One read gets the token, its workflow and any outcome remembered for the request id.
        Without an agent the started event goes into the commit (two memory calls in all);
        with one it is stored first, so watchers see the transition start before the agent
        runs."""
        read = await self.memory.call(
            tenant,
            self.store.GetTokenRecord,
            store_pb2.GetTokenRecordRequest(
                name=request.token, fire_request_id=request.request_id, with_workflow=True
            ),
        )
        token = read.token
        if read.fire_outcome.found:
            return Outcome(token, read.fire_outcome.fired, read.fire_outcome.event_seq)
        compiled = self.compiled(tenant, read.workflow)
        transition = compiled.transitions.get(request.transition)
        if transition is None:
            raise InvalidArgument.for_field(
                "transition", f"no transition {request.transition!r} in {workflow_of(token.name)}"
            )
        view = token_view(token)
        if request.HasField("data"):
            view = _with_data(view, view.data | _as_dict(request.data))
        self._check_enabled(transition, view)
        started = started_event(transition.id, workflow_pb2.FIRED_BY_CALL)
        if transition.execution is not None:
            await self.append(tenant, token, started)
        fire_key = request.request_id or uuid.uuid4().hex
        changes, attempt, failure = await self.run_transition_agent(
            tenant, token, view, transition, fire_key
        )
        return await self.commit_transition(
            tenant,
            token,
            compiled,
            transition,
            changes=changes,
            session=attempt.session if attempt else "",
            failure=failure,
            fired_by=workflow_pb2.FIRED_BY_CALL,
            fire_request_id=request.request_id,
            extra_events=[started] if transition.execution is None else [],
        )

    def _check_enabled(self, transition: CompiledTransition, view: TokenView) -> None:
        if view.place not in transition.from_places:
            places = ", ".join(sorted(transition.from_places))
            raise TransitionNotEnabled(
                f"the token is in place {view.place!r}; transition {transition.id!r} fires "
                f"from {places}"
            )
        for rule in transition.rules:
            if not rule.matches(view.scope()):
                raise RulesNotMet(
                    f"transition {transition.id!r}: rule {rule.text!r} does not hold for the token"
                )

    async def run_transition_agent(
        self,
        tenant: str,
        token: workflow_pb2.Token,
        view: TokenView,
        transition: CompiledTransition,
        fire_key: str,
    ) -> tuple[TokenChanges, Attempt | None, status_pb2.Status | None]:
        """Run the transition's agent with its retries: the token's changes, the last
        attempt, and the failure that stops a required agent (None: go on)."""
        unchanged = TokenChanges(data=view.data, metadata=view.metadata)
        execution = transition.execution
        if execution is None:
            return unchanged, None, None
        attempt_number = 1
        while True:
            key = run_key(token.name, transition.id, fire_key, attempt_number)
            attempt = await run_attempt(self.runner, tenant, execution, view, request_id=key)
            changes, attempt = apply_attempt(execution.output_mapping, attempt, view)
            will_retry = attempt.retryable(execution, attempt_number)
            await self.append(
                tenant,
                token,
                agent_run_event(
                    attempt, execution.agent, attempt_number, will_retry, transition.id
                ),
            )
            if attempt.ok:
                return changes, attempt, None
            if not will_retry:
                return unchanged, attempt, attempt.status if execution.required else None
            attempt_number += 1
            await self._sleep(execution.retry.delay_before(attempt_number).total_seconds())

    async def commit_transition(
        self,
        tenant: str,
        token: workflow_pb2.Token,
        compiled: CompiledWorkflow,
        transition: CompiledTransition,
        *,
        changes: TokenChanges,
        session: str,
        failure: status_pb2.Status | None,
        fired_by: workflow_pb2.FiredBy.ValueType,
        fire_request_id: str = "",
        extra_events: Sequence[workflow_pb2.WorkflowEvent] = (),
        complete: store_pb2.ClaimRef | None = None,
        schedule: Sequence[store_pb2.DueWork] = (),
    ) -> Outcome:
        request = store_pb2.CommitTokenRequest(
            token=token.name,
            expected_revision=token.revision,
            events=extra_events,
            fire_request_id=fire_request_id,
            fired=failure is None,
            data=to_struct(changes.data),
            metadata=to_struct(changes.metadata),
        )
        if complete is not None:
            request.complete.CopyFrom(complete)
        if failure is not None:
            request.events.add(
                transition_failed=workflow_pb2.TransitionFailed(
                    transition=transition.id, error=failure
                )
            )
            request.schedule.extend(schedule)
        else:
            now = self.now()
            request.place = transition.to_place
            request.move.CopyFrom(
                workflow_pb2.TokenMove(
                    transition=transition.id,
                    from_place=token.place,
                    to_place=transition.to_place,
                    session=session,
                    fired_by=fired_by,
                )
            )
            request.move.time.FromDatetime(now)
            request.events.add(
                transition_completed=workflow_pb2.TransitionCompleted(
                    transition=transition.id,
                    from_place=token.place,
                    to_place=transition.to_place,
                )
            )
            request.events.add(
                token_moved=workflow_pb2.TokenMoved(
                    from_place=token.place, to_place=transition.to_place
                )
            )
            arrival = self.arrival_work(
                compiled, transition.to_place, stay_revision=token.revision + 1, now=now
            )
            request.schedule.extend(arrival)
        reply = await self.memory.call(tenant, self.store.CommitToken, request)
        self.wake_for(request.schedule)
        return Outcome(reply.token, failure is None, reply.last_seq)

    async def append(
        self, tenant: str, token: workflow_pb2.Token, event: workflow_pb2.WorkflowEvent
    ) -> None:
        event.token = token.name
        await self.memory.call(
            tenant,
            self.store.AppendWorkflowEvents,
            store_pb2.AppendWorkflowEventsRequest(workflow=workflow_of(token.name), events=[event]),
        )


def _with_data(view: TokenView, data: dict[str, Json]) -> TokenView:
    return TokenView(
        workflow_id=view.workflow_id,
        token_id=view.token_id,
        place=view.place,
        data=data,
        metadata=view.metadata,
        history_count=view.history_count,
    )


def apply_attempt(
    mapping: Mapping[str, str], attempt: Attempt, view: TokenView
) -> tuple[TokenChanges, Attempt]:
    """The token's changes from a successful attempt; an output the mapping cannot use turns
    the attempt into a failure (FAILED_PRECONDITION, retried as RETRY_ON_FAILED)."""
    unchanged = TokenChanges(data=view.data, metadata=view.metadata)
    if attempt.result is None:
        return unchanged, attempt
    try:
        return apply_output(mapping, attempt.result, view), attempt
    except MappingError as error:
        status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=str(error))
        failed = Attempt(session=attempt.session, status=status, usage=attempt.usage)
        return unchanged, failed


def started_event(
    transition: str, fired_by: workflow_pb2.FiredBy.ValueType
) -> workflow_pb2.WorkflowEvent:
    return workflow_pb2.WorkflowEvent(
        transition_started=workflow_pb2.TransitionStarted(transition=transition, fired_by=fired_by)
    )


def agent_run_event(
    attempt: Attempt,
    agent: str,
    number: int,
    will_retry: bool,
    transition: str = "",
    place_agent: str = "",
) -> workflow_pb2.WorkflowEvent:
    return workflow_pb2.WorkflowEvent(
        agent_run=workflow_pb2.AgentRun(
            transition=transition,
            place_agent=place_agent,
            agent=agent,
            session=attempt.session,
            attempt=number,
            status=attempt.status,
            will_retry=will_retry,
            usage=attempt.usage,
        )
    )


def _first_run(
    agent: CompiledPlaceAgent, stay_revision: int, now: dt.datetime
) -> store_pb2.DueWork:
    item = store_pb2.DueWork(
        place_agent=store_pb2.PlaceAgentWork(
            place_agent=agent.id, execution=1, stay_revision=stay_revision
        ),
        attempt=1,
    )
    item.due_time.FromDatetime(now + agent.initial_delay)
    return item


def added_agents_work(
    before: CompiledWorkflow, after: CompiledWorkflow, now: dt.datetime
) -> list[store_pb2.PlaceArrival]:
    """For an update: the first runs of place agents it adds (or moves to another place) on
    the tokens already sitting in their places; the memory service writes one item per token,
    with the token's revision as its stay, in the update's transaction."""
    arrivals = []
    for agent in after.place_agents.values():
        old = before.place_agents.get(agent.id)
        if old is None or old.place != agent.place:
            arrival = store_pb2.PlaceArrival(place=agent.place)
            arrival.work.CopyFrom(_first_run(agent, 0, now))
            arrivals.append(arrival)
    return arrivals
