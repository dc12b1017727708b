"""Runs a session: the four strategies, termination, and exactly one terminal event.

`SessionEngine.run` takes a session and its prepared agents and drives the chosen strategy:

- ROUND_ROBIN: each round every agent (but a judge) speaks once from the shared conversation;
  stops at max rounds, a stop phrase, a judge saying GOAL REACHED, the token budget or the
  session deadline. `single_step=True` runs one round (the `Step` RPC).
- PIPELINE: a fixed list of stages, each an agent fed from `{goal}` and earlier stage outputs
  by name; sequential or parallel.
- PLANNER_EXECUTOR: a planner writes a JSON plan (validated, re-asked with the reason when
  invalid); ready tasks run in parallel up to a limit, each by an executor with READ_ONLY
  tools; a failed task retries with backoff, then the planner may re-plan once; a synthesis
  turn writes the answer from the task outputs.
- ROUTER: an analysis call classifies the goal as simple, tool or complex and hands it to one
  agent, one agent with tools, or planner/executor.

Whatever happens, the session ends with exactly one of session_completed, session_failed or
session_cancelled (cancellation of the running task becomes session_cancelled with the usage
billed so far), and its status in the store says the same.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import string
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry import trace

from agentmesh.common.v1 import (
    agents_pb2,
    events_pb2,
    messages_pb2,
    sessions_pb2,
)
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common.tokens import MESSAGE_OVERHEAD, count_text

from .agents import SessionAgent, prepare_agent
from .context import ContextAssembler
from .domain.agent_types import AgentKind
from .domain.analysis import shape_of
from .domain.plans import PlanDraft, PlannedTask, PlanRejected, parse_plan, plan_schema, ready_tasks
from .domain.templates import TemplateValues
from .events import EventRecorder
from .messaging import SEND_TOOL, Messenger
from .observability import OrchestratorMetrics
from .ports import ModelGateway, SessionStore
from .preferences import SessionScope, builtin_model
from .tools import Tool, ToolBox
from .turns import Turn, TurnFailed, TurnOutcome, TurnRunner, UsageMeter

ANALYSIS_SCHEMA: Mapping[str, object] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "reason"],
    "properties": {
        "kind": {"enum": ["simple", "tool", "complex"]},
        "reason": {"type": "string", "maxLength": 200},
    },
}
ROUTER_PROMPT = (
    'Classify the goal for a team of AI agents. Answer with JSON {"kind": ..., "reason": ...}'
    " where kind is 'simple' (one agent can answer directly), 'tool' (one agent needs tools "
    "such as a calculator, the time or memory) or 'complex' (it needs a plan of several tasks)."
)
JUDGE_PROMPT = (
    "Goal: {goal}\n\nAfter round {round}, has the conversation reached the goal? Start your "
    "answer with GOAL REACHED or GOAL NOT REACHED, then say why in one sentence."
)
_logger = logging.getLogger(__name__)
GOAL_KINDS = {
    "simple": events_pb2.GOAL_KIND_SIMPLE,
    "tool": events_pb2.GOAL_KIND_TOOL,
    "complex": events_pb2.GOAL_KIND_COMPLEX,
}


@dataclass(frozen=True)
class EngineSettings:
    """Defaults and bounds for sessions (each overridable by the session's limits)."""

    default_route: str = "default"
    default_max_rounds: int = 3
    default_max_parallel_tasks: int = 4
    default_max_plan_tasks: int = 6  # the built-in planner is told 2 to 6 tasks
    default_max_task_retries: int = 2
    plan_attempts: int = 3
    history_messages: int = 40
    context_window_tokens: int = 8192
    # Built-in agents (router, planner, ...) budget their prompt for this window unless their
    # model says otherwise: small enough for a small local model to keep track.
    builtin_context_window_tokens: int = 2048
    # Let the goal's shape decide the router's analysis where it is clear (domain/analysis).
    router_shortcuts: bool = True
    retry_backoff_seconds: float = 0.2


@dataclass(frozen=True)
class Limits:
    """A session's limits with defaults applied."""

    max_rounds: int
    max_total_tokens: int
    deadline: dt.datetime | None
    max_parallel_tasks: int
    max_plan_tasks: int
    max_task_retries: int

    @classmethod
    def of(cls, session: sessions_pb2.Session, settings: EngineSettings) -> Limits:
        limits = session.limits
        return cls(
            max_rounds=limits.max_rounds or settings.default_max_rounds,
            max_total_tokens=limits.max_total_tokens,
            deadline=(
                limits.deadline.ToDatetime(tzinfo=dt.UTC) if limits.HasField("deadline") else None
            ),
            max_parallel_tasks=limits.max_parallel_tasks or settings.default_max_parallel_tasks,
            max_plan_tasks=limits.max_plan_tasks or settings.default_max_plan_tasks,
            max_task_retries=limits.max_task_retries or settings.default_max_task_retries,
        )


class SessionFailure(Exception):
    """The session cannot go on; `status` says why (reaches the client in session_failed)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status_pb2.Status(code=code, message=message)


@dataclass(frozen=True)
class Ending:
    """How a strategy ended the session."""

    answer: str
    reason: str


@dataclass
class SessionRun:
    """Everything a strategy needs while one session runs on this replica."""

    tenant: str
    session: sessions_pb2.Session
    agents: list[SessionAgent]
    recorder: EventRecorder
    meter: UsageMeter
    turns: TurnRunner
    limits: Limits
    inbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    cancel_reason: str = "cancel_session"
    abandoned: bool = False
    tools: Mapping[str, Tool] = field(default_factory=dict)
    current_turn: asyncio.Task[TurnOutcome] | None = None
    interrupt_requested: bool = False
    # The newest messages of the shared conversation, kept here as the run adds them (the
    # store is read once per run, and again only after another replica wrote to it).
    conversation: list[memory_pb2.StoredMessage] | None = None
    # The user's preferences and what the session may search (None: nothing applies).
    scope: SessionScope | None = None

    def interrupt(self) -> bool:
        """Stop the turn in progress (its message never completes); False when idle."""
        if self.current_turn is None or self.current_turn.done():
            return False
        self.interrupt_requested = True
        self.current_turn.cancel()
        return True

    @property
    def name(self) -> str:
        return self.session.name

    def key(self, label: str) -> str:
        """The idempotency key of one step, named by what it is (round and agent, task and
        attempt), so a replica resuming the session derives the same keys for the same steps."""
        return f"{self.name}/{label}"


class SessionEngine:
    """Runs sessions against a store, a model gateway and a set of tools."""

    def __init__(
        self,
        *,
        store: SessionStore,
        gateway: ModelGateway,
        tools: Mapping[str, Tool],
        settings: EngineSettings | None = None,
        metrics: OrchestratorMetrics | None = None,
        tracer: trace.Tracer | None = None,
        context: ContextAssembler | None = None,
    ) -> None:
        self._context = context
        self._store = store
        self._gateway = gateway
        self._tools = tools
        self._settings = settings or EngineSettings()
        self._metrics = metrics
        self._tracer = tracer or trace.NoOpTracer()

    def open_run(
        self,
        tenant: str,
        session: sessions_pb2.Session,
        agents: Sequence[SessionAgent],
        *,
        trace_id: str = "",
        last_seq: int = 0,
        tools: Mapping[str, Tool] | None = None,
        lease_owner: str = "",
        scope: SessionScope | None = None,
    ) -> SessionRun:
        """Prepare a run of `session` (nothing is emitted yet); `tools` is the tenant's
        catalog (the engine's own tools when not given). With `lease_owner`, every write is
        refused once that owner no longer holds the session's lease. `scope` brings the
        user's settings (default models, local/online preference, documents to search)."""
        if scope is not None:
            agents = [scope.preferences.apply(agent) for agent in agents]
            scope = replace(scope, messaging=any(SEND_TOOL in a.definition.tools for a in agents))
        recorder = EventRecorder(
            self._store,
            tenant=tenant,
            session=session.name,
            trace_id=trace_id,
            lease_owner=lease_owner,
        )
        recorder.last_seq = last_seq
        meter = UsageMeter()
        meter.add(session.usage)
        turns = TurnRunner(
            gateway=self._gateway,
            store=self._store,
            recorder=recorder,
            meter=meter,
            tenant=tenant,
            session=session.name,
            user=session.metadata.get("user") or "default",
            metrics=self._metrics,
            tracer=self._tracer,
            scope=scope,
            context=self._context,
            messenger=Messenger(recorder, session.name, [a.name for a in agents]),
        )
        return SessionRun(
            tenant=tenant,
            session=session,
            agents=list(agents),
            recorder=recorder,
            meter=meter,
            turns=turns,
            limits=Limits.of(session, self._settings),
            tools=tools if tools is not None else self._tools,
            scope=scope,
            # Every message reaches a conversation with an event (a turn's commit, or
            # SendMessage's user_message): a session that never ran and has no events has an
            # empty conversation, and need not read it.
            conversation=(
                []
                if session.status == sessions_pb2.SESSION_STATUS_PENDING and last_seq == 0
                else None
            ),
        )

    async def run(
        self, run: SessionRun, *, single_step: bool = False, resumed: bool = False
    ) -> sessions_pb2.Session:
        """Run the session (or one round of it) and return it as stored afterwards.

        Ends with exactly one terminal event unless `single_step` left it running.
        """
        attributes: dict[str, str | bool] = {
            "agentmesh.session": run.name,
            "agentmesh.resumed": resumed,
        }
        with self._tracer.start_as_current_span("session.run", attributes=attributes):
            final = await self._run(run, single_step=single_step, resumed=resumed)
        if self._metrics is not None and final.status not in (
            sessions_pb2.SESSION_STATUS_PENDING,
            sessions_pb2.SESSION_STATUS_RUNNING,
        ):
            outcome = sessions_pb2.SessionStatus.Name(final.status).removeprefix("SESSION_STATUS_")
            self._metrics.sessions_ended.labels(outcome.lower()).inc()
        return final

    async def _run(
        self, run: SessionRun, *, single_step: bool, resumed: bool
    ) -> sessions_pb2.Session:
        session = run.session
        if resumed:
            run.turns.reuse_recorded_calls = True
        try:
            if session.status == sessions_pb2.SESSION_STATUS_PENDING or resumed:
                self._start(run, resumed=resumed)
            ending = await self._drive(run, single_step=single_step)
            if ending is None:
                self._save(run, ["rounds_completed", "usage"])
                await run.recorder.flush()
                return run.session
            await self._complete(run, ending)
        except asyncio.CancelledError:
            # A replica that lost the session's lease stops silently: the new owner goes on.
            if not run.abandoned and run.recorder.failure is None:
                await asyncio.shield(self._cancel(run, run.cancel_reason))
            raise
        except Exception as error:
            if run.recorder.failure is not None:
                # The store refused a write (it is down, or the lease is lost): nothing more
                # can be recorded here; the caller sees why, the session's next owner goes on.
                raise
            await self._end_on_error(run, error)
        return run.session

    async def _end_on_error(self, run: SessionRun, error: Exception) -> None:
        """End the session after `error` with the matching terminal event."""
        if isinstance(error, TimeoutError):
            await self._cancel(run, "deadline")
        elif isinstance(error, SessionFailure | TurnFailed):
            await self._fail(run, error.status)
        else:
            # A bug: end the session visibly, with a trace id to find it by.
            _logger.error("session %s failed unexpectedly", run.name, exc_info=error)
            await self._fail(
                run,
                status_pb2.Status(
                    code=code_pb2.INTERNAL,
                    message=f"internal error (trace {run.recorder.trace_id or 'unknown'})",
                ),
            )

    def _start(self, run: SessionRun, *, resumed: bool) -> None:
        """Mark the session RUNNING and announce it. Buffered: stored with the first turn's
        writes, or within the flush interval when that turn is slow."""
        session = run.session
        session.status = sessions_pb2.SESSION_STATUS_RUNNING
        self._save(run, ["status"])
        run.recorder.buffer(
            events_pb2.SessionEvent(
                session_started=events_pb2.SessionStarted(
                    goal=session.goal,
                    strategy=session.strategy,
                    agents=[a.name for a in run.agents],
                    resumed=resumed,
                )
            )
        )
        if not resumed:
            for agent in run.agents:
                run.recorder.buffer(
                    events_pb2.SessionEvent(
                        agent=agent.name,
                        agent_spawned=events_pb2.AgentSpawned(definition=agent.definition),
                    )
                )

    async def _drive(self, run: SessionRun, *, single_step: bool) -> Ending | None:
        strategy = run.session.strategy
        deadline = run.limits.deadline
        timeout = (
            max((deadline - dt.datetime.now(dt.UTC)).total_seconds(), 0.0) if deadline else None
        )
        try:
            async with asyncio.timeout(timeout):
                if strategy == sessions_pb2.STRATEGY_PIPELINE:
                    return await self._pipeline(run)
                if strategy == sessions_pb2.STRATEGY_PLANNER_EXECUTOR:
                    return await self._planner_executor(run)
                if strategy == sessions_pb2.STRATEGY_ROUTER:
                    return await self._router(run)
                return await self._round_robin(run, single_step=single_step)
        except TimeoutError:
            if strategy == sessions_pb2.STRATEGY_ROUND_ROBIN or strategy == 0:
                # The session's own deadline is one of round-robin's termination conditions.
                return Ending(await self._last_answer(run), "deadline")
            raise

    # -- round robin -------------------------------------------------------------------------

    async def _round_robin(self, run: SessionRun, *, single_step: bool) -> Ending | None:
        session = run.session
        judge_name = session.termination.judge_agent
        speakers = [a for a in run.agents if a.name != judge_name and a.label != judge_name]
        judge = next((a for a in run.agents if judge_name in (a.name, a.label)), None)
        if not speakers:
            raise SessionFailure(code_pb2.FAILED_PRECONDITION, "the session has no agents to speak")
        stop_phrase = session.termination.stop_phrase.lower()
        while True:
            if session.rounds_completed >= run.limits.max_rounds:
                return Ending(await self._last_answer(run), "max_rounds")
            round_number = session.rounds_completed + 1
            for agent in speakers:
                await self._deliver_user_messages(run)
                outcome = await self._interruptible(
                    run, self._conversation_turn(run, agent, round_number)
                )
                if outcome is None:  # interrupted by a user message: it is heard next
                    await self._deliver_user_messages(run)
                    continue
                if stop_phrase and stop_phrase in outcome.text.lower():
                    session.rounds_completed = round_number
                    return Ending(outcome.text, "stop_phrase")
                if self._over_budget(run):
                    session.rounds_completed = round_number
                    return Ending(await self._last_answer(run), "token_budget")
            session.rounds_completed = round_number
            self._save(run, ["rounds_completed"])
            if judge is not None and await self._judge_says_done(run, judge, round_number):
                return Ending(await self._last_answer(run), "judge")
            if single_step:
                return None

    async def _interruptible(
        self, run: SessionRun, turn: Coroutine[Any, Any, TurnOutcome]
    ) -> TurnOutcome | None:
        task = asyncio.create_task(turn)
        run.current_turn = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and run.interrupt_requested:
                run.interrupt_requested = False
                await run.recorder.flush()
                return None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            run.current_turn = None

    async def _conversation_turn(
        self, run: SessionRun, agent: SessionAgent, round_number: int
    ) -> TurnOutcome:
        history = await self._history(run, agent)
        prompt = agent.user_template.render(
            TemplateValues(
                goal=run.session.goal,
                round=round_number,
                history_count=len(history),
                metadata=run.session.metadata,
            )
        )
        outcome = await run.turns.run(
            Turn(
                agent=agent,
                prompt=prompt,
                history=history,
                tools=self._toolbox(run, agent, read_only=False),
                idempotency_key=run.key(f"r{round_number}-{agent.label}"),
                remember=True,
                round=round_number,
            )
        )
        self._remember(run, outcome)
        return outcome

    async def _judge_says_done(
        self, run: SessionRun, judge: SessionAgent, round_number: int
    ) -> bool:
        history = await self._history(run, judge)
        outcome = await run.turns.run(
            Turn(
                agent=judge,
                prompt=JUDGE_PROMPT.format(goal=run.session.goal, round=round_number),
                history=history,
                tools=self._toolbox(run, judge, read_only=True),
                idempotency_key=run.key(f"r{round_number}-judge-{judge.label}"),
                round=round_number,
            )
        )
        return outcome.text.strip().upper().startswith("GOAL REACHED")

    # -- pipeline ----------------------------------------------------------------------------

    async def _pipeline(self, run: SessionRun) -> Ending:
        spec = run.session.pipeline
        stages = list(spec.stages) or [sessions_pb2.PipelineStage(agent=a.name) for a in run.agents]
        outputs: dict[str, str] = {}

        async def run_stage(stage: sessions_pb2.PipelineStage) -> tuple[str, str]:
            agent = self._member(run, stage.agent, "pipeline.stages.agent")
            stage_name = stage.stage_name or agent.label
            stage_input = render_stage_input(stage.input_template, run.session.goal, outputs)
            outcome = await run.turns.run(
                Turn(
                    agent=agent,
                    prompt=agent.user_template.render(
                        TemplateValues(
                            goal=run.session.goal, input=stage_input, metadata=run.session.metadata
                        )
                    ),
                    history=(),
                    tools=self._toolbox(run, agent, read_only=False),
                    idempotency_key=run.key(f"stage-{stage_name}"),
                    remember=True,
                )
            )
            self._remember(run, outcome)
            return stage_name, outcome.text

        if spec.parallel:
            async with asyncio.TaskGroup() as group:
                pending = [group.create_task(run_stage(stage)) for stage in stages]
            results = [task.result() for task in pending]
            outputs.update(results)
            answer = "\n\n".join(f"## {name}\n{text}" for name, text in results)
            return Ending(answer, "pipeline_done")
        last = ""
        for stage in stages:
            name, last = await run_stage(stage)
            outputs[name] = last
        return Ending(last, "pipeline_done")

    # -- planner / executor -----------------------------------------------------------------

    async def _planner_executor(self, run: SessionRun) -> Ending:
        planner = self._agent_of_kind(run, AgentKind.PLANNER)
        plan = await self._make_plan(run, planner, feedback="")
        outputs: dict[str, str] = {}
        replanned = False
        while True:
            failed = await self._execute_plan(run, plan, outputs)
            if failed is None:
                break
            if replanned:
                raise SessionFailure(
                    code_pb2.ABORTED,
                    f"task {failed.task_id} failed after its retries, also after re-planning",
                )
            replanned = True
            done_summary = "\n".join(f"- {tid}: done" for tid in outputs)
            plan = await self._make_plan(
                run,
                planner,
                feedback=(
                    f"Task {failed.task_id} ({failed.description}) failed after retries. "
                    f"Completed so far:\n{done_summary or '- nothing'}\nMake a new plan for "
                    "what remains; do not repeat completed tasks."
                ),
                revision=2,
            )
        synthesizer = self._agent_of_kind(run, AgentKind.SYNTHESIS)
        results = "\n\n".join(f"### Task {tid}\n{text}" for tid, text in outputs.items())
        outcome = await run.turns.run(
            Turn(
                agent=synthesizer,
                prompt=synthesizer.user_template.render(
                    TemplateValues(
                        goal=run.session.goal, input=results, metadata=run.session.metadata
                    )
                ),
                history=(),
                tools=self._toolbox(run, synthesizer, read_only=True),
                idempotency_key=run.key(f"synthesis-r{run.session.plan.revision}"),
                remember=True,
            )
        )
        self._remember(run, outcome)
        return Ending(outcome.text, "answered")

    async def _make_plan(
        self, run: SessionRun, planner: SessionAgent, *, feedback: str, revision: int = 1
    ) -> PlanDraft:
        schema = ParseDict(plan_schema(run.limits.max_plan_tasks), struct_pb2.Struct())
        reason = ""
        started = dt.datetime.now(dt.UTC)
        for attempt in range(1, self._settings.plan_attempts + 1):
            extra = f"\n\n{feedback}" if feedback else ""
            if reason:
                extra += f"\n\nYour previous plan was rejected: {reason}. Answer with a valid plan."
            try:
                outcome = await run.turns.run(
                    Turn(
                        agent=planner,
                        prompt=planner.user_template.render(
                            TemplateValues(goal=run.session.goal, metadata=run.session.metadata)
                        )
                        + extra,
                        history=(),
                        tools=ToolBox({}, (), read_only=True),
                        idempotency_key=run.key(f"plan-r{revision}-a{attempt}"),
                        response_schema=schema,
                    )
                )
            except TurnFailed as failed:
                if not _output_rejected(failed.status):
                    raise
                # An answer that is no plan (e.g. cut by max_tokens) is one more attempt.
                reason = f"{failed.status.message}; write a shorter plan with fewer tasks"
                continue
            text = (
                json.dumps(MessageToDict(outcome.structured))
                if outcome.structured is not None
                else outcome.text
            )
            try:
                plan = parse_plan(text, max_tasks=run.limits.max_plan_tasks)
            except PlanRejected as rejected:
                reason = str(rejected)
                continue
            await self._publish_plan(run, plan, revision, dt.datetime.now(dt.UTC) - started)
            return plan
        raise SessionFailure(
            code_pb2.FAILED_PRECONDITION,
            f"the planner gave no valid plan in {self._settings.plan_attempts} attempts: {reason}",
        )

    async def _publish_plan(
        self, run: SessionRun, plan: PlanDraft, revision: int, took: dt.timedelta
    ) -> None:
        tasks = [
            sessions_pb2.Task(
                task_id=task.task_id,
                description=task.description,
                agent_type=_agent_type(task.agent_type),
                depends_on=task.depends_on,
                priority=task.priority,
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
        stored = await self._store.create_tasks(run.tenant, run.name, tasks)
        proto_plan = sessions_pb2.Plan(revision=revision, rationale=plan.rationale, tasks=stored)
        proto_plan.planning_duration.FromTimedelta(took)
        run.session.plan.CopyFrom(proto_plan)
        self._save(run, ["plan"])
        await run.recorder.emit(
            events_pb2.SessionEvent(plan_created=events_pb2.PlanCreated(plan=proto_plan))
        )

    async def _execute_plan(
        self, run: SessionRun, plan: PlanDraft, outputs: dict[str, str]
    ) -> PlannedTask | None:
        """Run the plan's tasks; return the task that failed for good, or None."""
        prefix = f"r{run.session.plan.revision}-" if run.session.plan.revision > 1 else ""
        stored = {t.task_id: t for t in run.session.plan.tasks}
        done: set[str] = set()
        started: set[str] = set()
        running: dict[asyncio.Task[str], PlannedTask] = {}
        try:
            while True:
                for task in ready_tasks(plan, frozenset(done), frozenset(started)):
                    if len(running) >= run.limits.max_parallel_tasks:
                        break
                    started.add(task.task_id)
                    proto = stored[prefix + task.task_id]
                    job = asyncio.create_task(self._run_task(run, task, proto, outputs, prefix))
                    running[job] = task
                if not running:
                    return None
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for job in finished:
                    task = running.pop(job)
                    if job.exception() is not None:
                        error = job.exception()
                        if isinstance(error, _TaskGaveUp):
                            await self._skip_rest(run, plan, done | {task.task_id}, prefix)
                            return task
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
                    await asyncio.shield(self._store.update_task(run.tenant, proto, ["status"]))

    async def _run_task(
        self,
        run: SessionRun,
        task: PlannedTask,
        proto: sessions_pb2.Task,
        outputs: Mapping[str, str],
        prefix: str,
    ) -> str:
        executor = self._executor_for(run, task.agent_type)
        inputs = "\n\n".join(
            f"Output of task {dep}:\n{outputs[prefix + dep]}" for dep in task.depends_on
        )
        for attempt in range(1, run.limits.max_task_retries + 2):
            proto.status = sessions_pb2.TASK_STATUS_RUNNING
            proto.agent = executor.name
            proto.retry_count = attempt - 1
            if attempt == 1:
                proto.start_time.GetCurrentTime()
            await self._store.update_task(run.tenant, proto, ["status", "agent", "retry_count"])
            await run.recorder.emit(
                events_pb2.SessionEvent(
                    agent=executor.name,
                    task_id=proto.task_id,
                    task_started=events_pb2.TaskStarted(
                        description=task.description, attempt=attempt
                    ),
                )
            )
            try:
                outcome = await run.turns.run(
                    Turn(
                        agent=executor,
                        prompt=executor.user_template.render(
                            TemplateValues(
                                goal=run.session.goal,
                                input=task.description,
                                context=inputs,
                                metadata=run.session.metadata,
                            )
                        ),
                        history=(),
                        tools=self._toolbox(run, executor, read_only=True),
                        idempotency_key=run.key(f"task-{proto.task_id}-a{attempt}"),
                        task_id=proto.task_id,
                    )
                )
            except TurnFailed as failed:
                will_retry = attempt <= run.limits.max_task_retries
                await run.recorder.emit(
                    events_pb2.SessionEvent(
                        agent=executor.name,
                        task_id=proto.task_id,
                        task_failed=events_pb2.TaskFailed(
                            error=failed.status, attempt=attempt, will_retry=will_retry
                        ),
                    )
                )
                if will_retry:
                    backoff = self._settings.retry_backoff_seconds * 2 ** (attempt - 1)
                    await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                    continue
                proto.status = sessions_pb2.TASK_STATUS_FAILED
                proto.error.CopyFrom(failed.status)
                proto.end_time.GetCurrentTime()
                await self._store.update_task(run.tenant, proto, ["status", "error"])
                raise _TaskGaveUp(task.task_id) from failed
            proto.status = sessions_pb2.TASK_STATUS_COMPLETED
            proto.output = outcome.text
            proto.usage.CopyFrom(outcome.usage)
            proto.end_time.GetCurrentTime()
            await self._store.update_task(run.tenant, proto, ["status", "output", "usage"])
            await run.recorder.emit(
                events_pb2.SessionEvent(
                    agent=executor.name,
                    task_id=proto.task_id,
                    task_completed=events_pb2.TaskCompleted(
                        output=outcome.text, usage=outcome.usage
                    ),
                )
            )
            return outcome.text
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _skip_rest(
        self, run: SessionRun, plan: PlanDraft, settled: set[str], prefix: str
    ) -> None:
        stored = {t.task_id: t for t in run.session.plan.tasks}
        for task in plan.tasks:
            proto = stored[prefix + task.task_id]
            if task.task_id not in settled and proto.status == sessions_pb2.TASK_STATUS_PENDING:
                proto.status = sessions_pb2.TASK_STATUS_SKIPPED
                await self._store.update_task(run.tenant, proto, ["status"])

    # -- router ------------------------------------------------------------------------------

    async def _router(self, run: SessionRun) -> Ending:
        tool_texts = [
            text for t in run.tools.values() for text in (t.spec.name, t.spec.description)
        ]
        shape = shape_of(run.session.goal, tool_texts) if self._settings.router_shortcuts else None
        kind, reason = shape if shape is not None else await self._analyse(run)
        chosen = {
            "simple": sessions_pb2.STRATEGY_ROUND_ROBIN,
            "tool": sessions_pb2.STRATEGY_ROUND_ROBIN,
            "complex": sessions_pb2.STRATEGY_PLANNER_EXECUTOR,
        }[kind]
        await run.recorder.emit(
            events_pb2.SessionEvent(
                analysis=events_pb2.Analysis(
                    kind=GOAL_KINDS[kind], chosen_strategy=chosen, reason=reason
                )
            )
        )
        if kind == "complex":
            return await self._planner_executor(run)
        wants_tools = kind == "tool"
        candidates = [
            a
            for a in run.agents
            if a.kind not in (AgentKind.PLANNER, AgentKind.SYNTHESIS, AgentKind.VALIDATION)
            and bool(a.definition.tools) == wants_tools
        ]
        if candidates:
            agent = candidates[0]
        elif wants_tools:
            agent = self._default_agent(
                run, AgentKind.EXECUTOR, "tool-user", tools=sorted(run.tools)
            )
        else:
            agent = self._default_agent(run, AgentKind.CUSTOM, "assistant")
        outcome = await self._conversation_turn(run, agent, round_number=1)
        run.session.rounds_completed = 1
        return Ending(outcome.text, "answered")

    async def _analyse(self, run: SessionRun) -> tuple[str, str]:
        """The goal's kind and why, in the model's words."""
        analyst = self._default_agent(run, AgentKind.CUSTOM, "router", system=ROUTER_PROMPT)
        analyst.definition.generation.max_tokens = 80  # a kind and one sentence
        schema = ParseDict(dict(ANALYSIS_SCHEMA), struct_pb2.Struct())
        try:
            outcome: TurnOutcome | None = await run.turns.run(
                Turn(
                    agent=analyst,
                    prompt=f"Goal: {run.session.goal}",
                    history=(),
                    tools=ToolBox({}, (), read_only=True),
                    idempotency_key=run.key("analysis"),
                    response_schema=schema,
                )
            )
        except TurnFailed as failed:
            # A model that cannot give a structured answer must not sink the session.
            _logger.info("analysis failed (%s); answering directly", failed.status.message)
            outcome = None
        return _parse_analysis(outcome)

    # -- shared helpers ----------------------------------------------------------------------

    async def _complete(self, run: SessionRun, ending: Ending) -> None:
        run.session.final_answer = ending.answer
        await self._end(
            run,
            sessions_pb2.SESSION_STATUS_COMPLETED,
            ["final_answer"],
            events_pb2.SessionEvent(
                session_completed=events_pb2.SessionCompleted(
                    final_answer=ending.answer,
                    usage=run.meter.snapshot(),
                    termination_reason=ending.reason,
                    citations=run.turns.cited.citations,
                )
            ),
        )

    async def _fail(self, run: SessionRun, status: status_pb2.Status) -> None:
        run.session.error.CopyFrom(status)
        await self._end(
            run,
            sessions_pb2.SESSION_STATUS_FAILED,
            ["error"],
            events_pb2.SessionEvent(
                session_failed=events_pb2.SessionFailed(error=status, usage=run.meter.snapshot())
            ),
        )

    async def _cancel(self, run: SessionRun, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.cancellations.labels(reason).inc()
            self._metrics.sessions_ended.labels("cancelled").inc()
        run.session.error.CopyFrom(
            status_pb2.Status(code=code_pb2.CANCELLED, message=f"session cancelled: {reason}")
        )
        await self._end(
            run,
            sessions_pb2.SESSION_STATUS_CANCELLED,
            ["error"],
            events_pb2.SessionEvent(
                session_cancelled=events_pb2.SessionCancelled(
                    reason=reason, usage=run.meter.snapshot()
                )
            ),
        )

    async def _end(
        self,
        run: SessionRun,
        status: sessions_pb2.SessionStatus.ValueType,
        fields: Sequence[str],
        terminal: events_pb2.SessionEvent,
    ) -> None:
        """Store the session's end: the status and `fields` with the terminal event, in one
        commit, and wait until it is stored."""
        # Only the named fields of a staged change are written, so `fields` may be set before;
        # the status must not change again until RUNNING is stored.
        await run.recorder.settle_status()
        run.session.status = status
        run.session.end_time.GetCurrentTime()
        self._save(run, ["status", *fields, "rounds_completed"])
        await run.recorder.emit(terminal)
        await run.recorder.flush()

    def _save(self, run: SessionRun, fields: Sequence[str]) -> None:
        """Stage a change to the session (stored with the run's next commit)."""
        run.session.usage.CopyFrom(run.meter.snapshot())
        run.recorder.stage_update(run.session, [*fields, "usage"])

    async def _deliver_user_messages(self, run: SessionRun) -> None:
        while not run.inbox.empty():
            content = run.inbox.get_nowait()
            await self._add_to_conversation(
                run,
                memory_pb2.StoredMessage(
                    message=messages_pb2.Message(role=messages_pb2.ROLE_USER, content=content)
                ),
            )

    def _remember(self, run: SessionRun, outcome: TurnOutcome) -> None:
        """Keep a turn's answer (stored with the turn, see `Turn.remember`) in the run's copy
        of the conversation, when it holds one."""
        if run.conversation is not None and outcome.remembered is not None:
            self._keep(run.conversation, outcome.remembered)

    async def _add_to_conversation(
        self, run: SessionRun, message: memory_pb2.StoredMessage
    ) -> None:
        conversation = await self._conversation(run)
        run.recorder.stage_messages([message])
        self._keep(conversation, message)

    def _keep(
        self, conversation: list[memory_pb2.StoredMessage], message: memory_pb2.StoredMessage
    ) -> None:
        """Add `message` to the run's copy, which holds the newest `history_messages`."""
        conversation.append(message)
        del conversation[: -self._settings.history_messages]

    async def _conversation(self, run: SessionRun) -> list[memory_pb2.StoredMessage]:
        """The newest messages of the session's conversation, read from the store once per run
        (and again when another replica wrote to the session meanwhile)."""
        if run.conversation is None or run.recorder.foreign_writes:
            if run.recorder.messages_unstored:
                await run.recorder.flush()  # the read must see this run's own messages
            run.recorder.foreign_writes = False
            run.conversation = await self._store.recent_messages(
                run.tenant, run.name, self._settings.history_messages
            )
        return run.conversation

    async def _history(self, run: SessionRun, agent: SessionAgent) -> list[messages_pb2.Message]:
        """The shared conversation as this agent sees it, newest messages within the budget
        of its model's context window (counted with the gateway's token estimator)."""
        stored = await self._conversation(run)
        window = (
            agent.definition.model.context_window_tokens or self._settings.context_window_tokens
        )
        budget = window - (agent.definition.generation.max_tokens or 1024) - 512
        budget -= count_text(agent.definition.prompts.system) + MESSAGE_OVERHEAD
        picked: list[messages_pb2.Message] = []
        for item in reversed(stored):
            message = _as_seen_by(item, agent)
            cost = count_text(message.content) + count_text(message.name) + MESSAGE_OVERHEAD
            if cost > budget:
                break
            budget -= cost
            picked.append(message)
        picked.reverse()
        return picked

    async def _last_answer(self, run: SessionRun) -> str:
        for item in reversed(await self._conversation(run)):
            if item.message.role == messages_pb2.ROLE_ASSISTANT and item.message.content:
                return item.message.content
        return ""

    def _over_budget(self, run: SessionRun) -> bool:
        budget = run.limits.max_total_tokens
        return budget > 0 and run.meter.total.total_tokens >= budget

    def _toolbox(self, run: SessionRun, agent: SessionAgent, *, read_only: bool) -> ToolBox:
        return ToolBox(run.tools, agent.definition.tools, read_only=read_only)

    def _member(self, run: SessionRun, name: str, field_name: str) -> SessionAgent:
        for agent in run.agents:
            if name in (agent.name, agent.label):
                return agent
        raise SessionFailure(code_pb2.INVALID_ARGUMENT, f"{field_name}: {name!r} is not a member")

    def _agent_of_kind(self, run: SessionRun, kind: AgentKind) -> SessionAgent:
        for agent in run.agents:
            if agent.kind is kind:
                return agent
        return self._default_agent(run, kind, kind.value)

    def _executor_for(self, run: SessionRun, agent_type: str) -> SessionAgent:
        wanted = AgentKind(agent_type) if agent_type in AgentKind._value2member_map_ else None
        for kind in (wanted, AgentKind.EXECUTOR):
            for agent in run.agents:
                if kind is not None and agent.kind is kind:
                    return agent
        return self._default_agent(run, wanted or AgentKind.EXECUTOR, agent_type or "executor")

    def _default_agent(
        self,
        run: SessionRun,
        kind: AgentKind,
        label: str,
        *,
        system: str = "",
        tools: Sequence[str] = (),
    ) -> SessionAgent:
        """A built-in agent on the user's model for its type, else the route of the session's
        first agent, else the user's default route, else the orchestrator's
        (preferences.builtin_model)."""
        preferences = run.scope.preferences if run.scope is not None else None
        model = builtin_model(preferences, kind, run.agents, self._settings.default_route)
        if not model.context_window_tokens:
            model.context_window_tokens = self._settings.builtin_context_window_tokens
        definition = agents_pb2.AgentDefinition(
            name=f"builtin/{label}",
            type=_agent_type(kind.value),
            model=model,
            prompts=agents_pb2.AgentPrompts(system=system),
            tools=tools,
        )
        return prepare_agent(definition, field="builtin")


class _TaskGaveUp(Exception):
    """A plan task failed after all its retries."""


def render_stage_input(template: str, goal: str, outputs: Mapping[str, str]) -> str:
    """A pipeline stage's input: `{goal}` and `{stage_name}` of earlier stages."""
    if not template:
        return "\n\n".join([goal, *outputs.values()]) if outputs else goal
    values = {"goal": goal, **outputs}
    return string.Formatter().vformat(template, (), _Missing(values))


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _as_seen_by(item: memory_pb2.StoredMessage, agent: SessionAgent) -> messages_pb2.Message:
    message = item.message
    if message.role != messages_pb2.ROLE_ASSISTANT or item.agent == agent.name:
        return messages_pb2.Message(role=message.role, content=message.content, name=message.name)
    # Another agent's words reach this agent as a named user turn (AutoGen's convention).
    speaker = item.agent.rsplit("/", 1)[-1] or message.name
    return messages_pb2.Message(
        role=messages_pb2.ROLE_USER, content=f"[{speaker}] {message.content}", name=speaker
    )


def _agent_type(name: str) -> agents_pb2.AgentType.ValueType:
    return {
        "planner": agents_pb2.AGENT_TYPE_PLANNER,
        "executor": agents_pb2.AGENT_TYPE_EXECUTOR,
        "research": agents_pb2.AGENT_TYPE_RESEARCH,
        "synthesis": agents_pb2.AGENT_TYPE_SYNTHESIS,
        "validation": agents_pb2.AGENT_TYPE_VALIDATION,
        "critic": agents_pb2.AGENT_TYPE_CRITIC,
    }.get(name, agents_pb2.AGENT_TYPE_CUSTOM)


def _output_rejected(status: status_pb2.Status) -> bool:
    """The gateway refused the model's answer as structured output (not a failed call)."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason == "STRUCTURED_OUTPUT_INVALID":
            return True
    return False


def _parse_analysis(outcome: TurnOutcome | None) -> tuple[str, str]:
    document: object
    if outcome is None:
        document = {}
    elif outcome.structured is not None:
        document = MessageToDict(outcome.structured)
    else:
        try:
            document = json.loads(outcome.text)
        except ValueError:
            document = {}
    if isinstance(document, dict) and document.get("kind") in GOAL_KINDS:
        return str(document["kind"]), str(document.get("reason", ""))
    # An unusable analysis must not sink the session: one agent answers directly, and says so.
    return "simple", "no usable analysis from the model; one agent answers directly"


__all__ = [
    "EngineSettings",
    "SessionEngine",
    "SessionFailure",
    "SessionRun",
    "render_stage_input",
]
