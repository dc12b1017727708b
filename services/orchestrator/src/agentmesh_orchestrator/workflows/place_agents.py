"""A place agent's due run on a token, claimed by this replica from the memory service.

The run checks that the token is still in the place (a move cancels the due work of the old
place, so a stale item only ever finds its token gone), the trigger rules, then runs the
agent. Whatever follows is one commit that also completes the claimed item: the output written
into the token and, with an auto transition whose rules hold (and whose own agent, if any,
succeeded), the move; or, for a failed attempt that may be retried, the item due again after
the backoff. A replica that dies at any point leaves the item claimed until its claim expires;
another replica then runs it again, finds the same agent session by its key (nothing is paid
twice) and commits once: a commit under a lost claim is refused and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.memory.v1 import workflows_pb2 as store_pb2
from agentmesh.workflow.v1 import workflow_pb2
from agentmesh_common import NotFound

from .definition import CompiledPlaceAgent, CompiledWorkflow
from .engine import (
    WorkflowEngine,
    agent_run_event,
    apply_attempt,
    run_key,
    started_event,
    to_struct,
    token_view,
)
from .mapping import TokenChanges, TokenView
from .rules import all_match
from .runs import run_attempt


@dataclass
class PlaceAgentRun:
    engine: WorkflowEngine
    tenant: str
    item: store_pb2.DueWork
    claim: store_pb2.ClaimRef

    async def run(self) -> None:
        work = self.item.place_agent
        try:
            token, compiled = await self.engine.token_and_workflow(self.tenant, work.token)
        except NotFound:
            await self._complete()  # the token or its workflow is gone
            return
        agent = compiled.place_agents.get(work.place_agent)
        if agent is None or token.place != agent.place:
            await self._complete()  # an update removed it, or the token moved on
            return
        view = token_view(token)
        if not all_match(agent.trigger_rules, view.scope()):
            await self._complete(next_run=self._next_execution(agent, work.execution))
            return
        await self._run_agent(token, compiled, agent, view)

    async def _run_agent(
        self,
        token: workflow_pb2.Token,
        compiled: CompiledWorkflow,
        agent: CompiledPlaceAgent,
        view: TokenView,
    ) -> None:
        work = self.item.place_agent
        number = self.item.attempt or 1
        key = run_key(token.name, agent.id, work.stay_revision, work.execution, number)
        attempt = await run_attempt(
            self.engine.runner,
            self.tenant,
            agent.execution,
            view,
            request_id=key,
            generation=agent.generation,
        )
        changes, attempt = apply_attempt(agent.execution.output_mapping, attempt, view)
        will_retry = attempt.retryable(agent.execution, number)
        events = self._trigger_events(agent, work.execution)
        events.append(
            agent_run_event(
                attempt, agent.execution.agent, number, will_retry, place_agent=agent.id
            )
        )
        next_run = self._next_execution(agent, work.execution)
        if not attempt.ok:
            if will_retry:
                next_run = self._retry(agent, number + 1)
            await self._commit(token, None, events, next_run)
            return
        transition = compiled.transitions.get(agent.auto_transition)
        moved = TokenView(
            workflow_id=view.workflow_id,
            token_id=view.token_id,
            place=view.place,
            data=changes.data,
            metadata=changes.metadata,
            history_count=view.history_count,
        )
        if transition is None or not all_match(transition.rules, moved.scope()):
            await self._commit(token, changes, events, next_run)
            return
        events.append(started_event(transition.id, workflow_pb2.FIRED_BY_PLACE_AGENT))
        fire_key = run_key(key, "auto")
        changes, transition_attempt, failure = await self.engine.run_transition_agent(
            self.tenant, token, moved, transition, fire_key
        )
        await self.engine.commit_transition(
            self.tenant,
            token,
            compiled,
            transition,
            changes=changes if failure is None else _as_changes(moved),
            session=transition_attempt.session if transition_attempt else "",
            failure=failure,
            fired_by=workflow_pb2.FIRED_BY_PLACE_AGENT,
            extra_events=events,
            complete=self.claim,
            schedule=[next_run] if next_run is not None and failure is not None else [],
        )

    async def _commit(
        self,
        token: workflow_pb2.Token,
        changes: TokenChanges | None,
        events: list[workflow_pb2.WorkflowEvent],
        following: store_pb2.DueWork | None,
    ) -> None:
        """The run's events, its output (if any) and its next item, completing the claim: one
        transaction, refused (and nothing written) if the claim was lost meanwhile."""
        request = store_pb2.CommitTokenRequest(
            token=token.name, expected_revision=token.revision, events=events, complete=self.claim
        )
        if changes is not None:
            request.data.CopyFrom(to_struct(changes.data))
            request.metadata.CopyFrom(to_struct(changes.metadata))
        if following is not None:
            request.schedule.append(following)
        await self.engine.memory.call(self.tenant, self.engine.store.CommitToken, request)
        self.engine.wake_for(request.schedule)

    def _retry(self, agent: CompiledPlaceAgent, attempt: int) -> store_pb2.DueWork:
        item = store_pb2.DueWork(place_agent=self.item.place_agent, attempt=attempt)
        delay = agent.execution.retry.delay_before(attempt)
        item.due_time.FromDatetime(self.engine.now() + delay)
        return item

    def _next_execution(
        self, agent: CompiledPlaceAgent, execution: int
    ) -> store_pb2.DueWork | None:
        """The next run of the agent on this stay, or None when the schedule is done."""
        if agent.interval is None:
            return None
        if agent.max_executions and execution >= agent.max_executions:
            return None
        work = self.item.place_agent
        item = store_pb2.DueWork(
            place_agent=store_pb2.PlaceAgentWork(
                token=work.token,
                place_agent=work.place_agent,
                execution=execution + 1,
                stay_revision=work.stay_revision,
            ),
            attempt=1,
        )
        item.due_time.FromDatetime(self.engine.now() + agent.interval)
        return item

    def _trigger_events(
        self, agent: CompiledPlaceAgent, execution: int
    ) -> list[workflow_pb2.WorkflowEvent]:
        if (self.item.attempt or 1) > 1:
            return []  # a retry: the first attempt said so
        events = []
        if agent.interval is not None or agent.initial_delay:
            events.append(
                workflow_pb2.WorkflowEvent(
                    schedule_fired=workflow_pb2.ScheduleFired(
                        schedule=agent.id, due_time=self.item.due_time
                    )
                )
            )
        events.append(
            workflow_pb2.WorkflowEvent(
                place_agent_triggered=workflow_pb2.PlaceAgentTriggered(
                    place_agent=agent.id, execution=execution
                )
            )
        )
        return events

    async def _complete(self, *, next_run: store_pb2.DueWork | None = None) -> None:
        """End the claimed item without touching the token (nothing ran)."""
        request = store_pb2.CompleteDueWorkRequest(claim=self.claim)
        if next_run is not None:
            request.schedule.append(next_run)
        await self.engine.memory.call(self.tenant, self.engine.store.CompleteDueWork, request)
        self.engine.wake_for(request.schedule)


def _as_changes(view: TokenView) -> TokenChanges:
    return TokenChanges(data=view.data, metadata=view.metadata)
