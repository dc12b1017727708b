"""PLANNER_EXECUTOR: a planner writes a plan; executors run its tasks; a writer synthesizes.

The planner answers with a JSON plan (sent the plan schema; validated, and asked again with
the reason when invalid). Ready tasks run in parallel up to a limit, each by an executor with
READ_ONLY tools; a failed task retries with backoff, then the planner may re-plan once; a
synthesis turn writes the answer from the task outputs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import Mapping

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh.common.v1 import events_pb2, sessions_pb2
from agentmesh_orchestrator.agents import SessionAgent
from agentmesh_orchestrator.domain.agent_types import AgentKind
from agentmesh_orchestrator.domain.plans import (
    SUB_TASKS,
    PlanDraft,
    PlanIdsRejected,
    PlannedTask,
    PlanRejected,
    numbered_plan_schema,
    parse_plan,
    plan_schema,
    ready_tasks,
)
from agentmesh_orchestrator.domain.templates import TemplateValues
from agentmesh_orchestrator.runtime import Ending, Runtime, SessionFailure, agent_type
from agentmesh_orchestrator.termination import Terminated
from agentmesh_orchestrator.tools import ToolBox
from agentmesh_orchestrator.turns import Turn, TurnFailed

from .base import Strategy


class PlannerExecutor(Strategy):
    """Plan, execute the tasks, synthesize."""

    kind = sessions_pb2.STRATEGY_PLANNER_EXECUTOR

    async def run(self, rt: Runtime, *, single_step: bool) -> Ending:
        planner = rt.agent_of_kind(AgentKind.PLANNER)
        plan = await _make_plan(rt, planner, feedback="")
        outputs: dict[str, str] = {}
        replanned = False
        while True:
            gave_up = await _execute_plan(rt, plan, outputs)
            if gave_up is None:
                break
            failed, error = gave_up
            if replanned:
                raise SessionFailure(
                    code_pb2.ABORTED,
                    f"task {failed.task_id} failed after its retries, also after re-planning",
                )
            replanned = True
            done_summary = "\n".join(f"- {tid}: done" for tid in outputs)
            plan = await _make_plan(
                rt,
                planner,
                feedback=(
                    f"Task {failed.task_id} ({failed.description}) failed after retries: "
                    f"{error.message or code_pb2.Code.Name(error.code)}. "
                    f"Completed so far:\n{done_summary or '- nothing'}\nMake a new plan for "
                    "what remains that avoids this failure; do not repeat completed tasks."
                ),
                revision=2,
            )
        synthesizer = rt.agent_of_kind(AgentKind.SYNTHESIS)
        results = "\n\n".join(f"### Task {tid}\n{text}" for tid, text in outputs.items())
        outcome = await rt.remembered_turn(
            Turn(
                agent=synthesizer,
                prompt=synthesizer.user_template.render(
                    TemplateValues(
                        goal=rt.session.goal, input=results, metadata=rt.session.metadata
                    )
                ),
                history=(),
                tools=rt.toolbox(synthesizer, read_only=True),
                idempotency_key=rt.key(f"synthesis-r{rt.session.plan.revision}"),
                remember=True,
            )
        )
        return Ending(outcome.text, "answered")


class _TaskGaveUp(Exception):
    """A plan task failed after all its retries; `status` is its last error."""

    def __init__(self, task_id: str, status: status_pb2.Status) -> None:
        super().__init__(task_id)
        self.status = status


async def _make_plan(
    rt: Runtime, planner: SessionAgent, *, feedback: str, revision: int = 1
) -> PlanDraft:
    sub_tasks = SUB_TASKS in planner.definition.capabilities
    reason = ""
    started = dt.datetime.now(dt.UTC)
    attempts = rt.settings.plan_attempts
    # What the next attempt is constrained to: after unusable ids, ids fixed by position;
    # after an answer cut short, fewer tasks.
    numbered = False
    max_tasks = rt.limits.max_plan_tasks
    for attempt in range(1, attempts + 1):
        shape = numbered_plan_schema if numbered else plan_schema
        schema = ParseDict(shape(max_tasks, sub_tasks=sub_tasks), struct_pb2.Struct())
        extra = f"\n\n{feedback}" if feedback else ""
        if sub_tasks:
            extra += (
                "\n\nA task may name a parent, the id of the task it is a part of: the parent"
                " runs after all its parts, with their outputs."
            )
        if reason:
            extra += f"\n\nYour previous plan was rejected: {reason}. Answer with a valid plan."
        try:
            outcome = await rt.run_turn(
                Turn(
                    agent=planner,
                    prompt=planner.user_template.render(
                        TemplateValues(goal=rt.session.goal, metadata=rt.session.metadata)
                    )
                    + extra,
                    history=(),
                    tools=ToolBox({}, (), read_only=True),
                    idempotency_key=rt.key(f"plan-r{revision}-a{attempt}"),
                    response_schema=schema,
                )
            )
        except TurnFailed as failed:
            if not output_rejected(failed.status):
                raise
            # An answer that is no plan (e.g. cut by max_tokens) is one more attempt.
            reason = f"{failed.status.message}; write a shorter plan with fewer tasks"
            max_tasks = max(2, max_tasks // 2)
            continue
        text = (
            json.dumps(MessageToDict(outcome.structured))
            if outcome.structured is not None
            else outcome.text
        )
        try:
            plan = parse_plan(text, max_tasks=rt.limits.max_plan_tasks)
        except PlanIdsRejected as rejected:
            reason = f"{rejected}; number the tasks t1, t2, ... in order"
            numbered = True
            continue
        except PlanRejected as rejected:
            reason = str(rejected)
            continue
        await _publish_plan(rt, plan, revision, dt.datetime.now(dt.UTC) - started)
        return plan
    raise SessionFailure(
        code_pb2.FAILED_PRECONDITION,
        f"the planner gave no valid plan in {attempts} attempts: {reason}",
    )


async def _publish_plan(rt: Runtime, plan: PlanDraft, revision: int, took: dt.timedelta) -> None:
    tasks = [
        sessions_pb2.Task(
            task_id=task.task_id,
            description=task.description,
            agent_type=agent_type(task.agent_type),
            depends_on=task.depends_on,
            priority=task.priority,
            parent_task_id=task.parent,
            status=sessions_pb2.TASK_STATUS_PENDING,
        )
        for task in plan.tasks
    ]
    for task in tasks:
        task.create_time.GetCurrentTime()
    if revision > 1:
        for task in tasks:
            task.task_id = f"r{revision}-{task.task_id}"
            task.depends_on[:] = [f"r{revision}-{d}" for d in task.depends_on]
            if task.parent_task_id:
                task.parent_task_id = f"r{revision}-{task.parent_task_id}"
    stored = await rt.store.create_tasks(rt.tenant, rt.name, tasks)
    proto_plan = sessions_pb2.Plan(revision=revision, rationale=plan.rationale, tasks=stored)
    proto_plan.planning_duration.FromTimedelta(took)
    rt.session.plan.CopyFrom(proto_plan)
    rt.save(["plan"])
    await rt.recorder.emit(
        events_pb2.SessionEvent(plan_created=events_pb2.PlanCreated(plan=proto_plan))
    )


async def _execute_plan(
    rt: Runtime, plan: PlanDraft, outputs: dict[str, str]
) -> tuple[PlannedTask, status_pb2.Status] | None:
    """Run the plan's tasks; return the task that failed for good with its error, or None."""
    prefix = f"r{rt.session.plan.revision}-" if rt.session.plan.revision > 1 else ""
    stored = {t.task_id: t for t in rt.session.plan.tasks}
    done: set[str] = set()
    started: set[str] = set()
    running: dict[asyncio.Task[str], PlannedTask] = {}
    try:
        while True:
            for task in ready_tasks(plan, frozenset(done), frozenset(started)):
                if len(running) >= rt.limits.max_parallel_tasks:
                    break
                started.add(task.task_id)
                proto = stored[prefix + task.task_id]
                job = asyncio.create_task(_run_task(rt, task, proto, outputs, prefix))
                running[job] = task
            if not running:
                return None
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for job in finished:
                task = running.pop(job)
                if job.exception() is not None:
                    error = job.exception()
                    if isinstance(error, _TaskGaveUp):
                        await _skip_rest(rt, plan, done | {task.task_id}, prefix)
                        return task, error.status
                    if isinstance(error, Terminated):  # e.g. the token budget: stop the plan
                        kept = done | started
                        if stored[prefix + task.task_id].status == sessions_pb2.TASK_STATUS_RUNNING:
                            # Stopped before its model call could start: skipped as well.
                            kept = kept - {task.task_id}
                        await _skip_rest(rt, plan, kept, prefix)
                    raise error  # type: ignore[misc]
                outputs[prefix + task.task_id] = job.result()
                done.add(task.task_id)
    finally:
        for job in running:
            job.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
            for task in running.values():
                proto = stored[prefix + task.task_id]
                proto.status = sessions_pb2.TASK_STATUS_CANCELLED
                proto.end_time.GetCurrentTime()
                await asyncio.shield(rt.store.update_task(rt.tenant, proto, ["status"]))


async def _run_task(
    rt: Runtime,
    task: PlannedTask,
    proto: sessions_pb2.Task,
    outputs: Mapping[str, str],
    prefix: str,
) -> str:
    executor = rt.executor_for(task.agent_type)
    inputs = "\n\n".join(
        f"Output of task {dep}:\n{outputs[prefix + dep]}" for dep in task.depends_on
    )
    for attempt in range(1, rt.limits.max_task_retries + 2):
        proto.status = sessions_pb2.TASK_STATUS_RUNNING
        proto.agent = executor.name
        proto.retry_count = attempt - 1
        if attempt == 1:
            proto.start_time.GetCurrentTime()
        await rt.store.update_task(rt.tenant, proto, ["status", "agent", "retry_count"])
        await rt.recorder.emit(
            events_pb2.SessionEvent(
                agent=executor.name,
                task_id=proto.task_id,
                task_started=events_pb2.TaskStarted(description=task.description, attempt=attempt),
            )
        )
        try:
            outcome = await rt.turns.run(
                Turn(
                    agent=executor,
                    prompt=executor.user_template.render(
                        TemplateValues(
                            goal=rt.session.goal,
                            input=task.description,
                            context=inputs,
                            metadata=rt.session.metadata,
                        )
                    ),
                    history=(),
                    tools=rt.toolbox(executor, read_only=True),
                    idempotency_key=rt.key(f"task-{proto.task_id}-a{attempt}"),
                    task_id=proto.task_id,
                )
            )
        except TurnFailed as failed:
            will_retry = attempt <= rt.limits.max_task_retries
            await rt.recorder.emit(
                events_pb2.SessionEvent(
                    agent=executor.name,
                    task_id=proto.task_id,
                    task_failed=events_pb2.TaskFailed(
                        error=failed.status, attempt=attempt, will_retry=will_retry
                    ),
                )
            )
            if will_retry:
                backoff = rt.settings.retry_backoff_seconds * 2 ** (attempt - 1)
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                continue
            proto.status = sessions_pb2.TASK_STATUS_FAILED
            proto.error.CopyFrom(failed.status)
            proto.end_time.GetCurrentTime()
            await rt.store.update_task(rt.tenant, proto, ["status", "error"])
            raise _TaskGaveUp(task.task_id, failed.status) from failed
        proto.status = sessions_pb2.TASK_STATUS_COMPLETED
        proto.output = outcome.text
        proto.usage.CopyFrom(outcome.usage)
        proto.end_time.GetCurrentTime()
        await rt.store.update_task(rt.tenant, proto, ["status", "output", "usage"])
        await rt.recorder.emit(
            events_pb2.SessionEvent(
                agent=executor.name,
                task_id=proto.task_id,
                task_completed=events_pb2.TaskCompleted(output=outcome.text, usage=outcome.usage),
            )
        )
        await rt.after_turn(outcome)  # the task is done either way; this may end the session
        return outcome.text
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _skip_rest(rt: Runtime, plan: PlanDraft, settled: set[str], prefix: str) -> None:
    stored = {t.task_id: t for t in rt.session.plan.tasks}
    for task in plan.tasks:
        proto = stored[prefix + task.task_id]
        if task.task_id not in settled and proto.status in (
            sessions_pb2.TASK_STATUS_PENDING,
            sessions_pb2.TASK_STATUS_RUNNING,
        ):
            proto.status = sessions_pb2.TASK_STATUS_SKIPPED
            await rt.store.update_task(rt.tenant, proto, ["status"])


def output_rejected(status: status_pb2.Status) -> bool:
    """The gateway refused the model's answer as structured output (not a failed call)."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason == "STRUCTURED_OUTPUT_INVALID":
            return True
    return False
