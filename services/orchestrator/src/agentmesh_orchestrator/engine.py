"""Runs a session: starts it, drives its strategy, and ends it with exactly one terminal event.

`SessionEngine.open_run` prepares a `Runtime` for a session and its agents; `run` marks the
session RUNNING, announces it, and hands the runtime to the session's strategy (one module
each in `strategies/`, found by the registry) under the session's deadline. Whatever happens,
the session ends here with exactly one of session_completed, session_failed or
session_cancelled (cancellation of the running task becomes session_cancelled with the usage
billed so far), and its status in the store says the same. A strategy decides only what its
ending is (`Ending`), or fails with `SessionFailure` / `TurnFailed`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace

from google.rpc import code_pb2, status_pb2
from opentelemetry import trace

from agentmesh.common.v1 import events_pb2, sessions_pb2

from .agents import SessionAgent
from .approvals import ApprovalGate
from .budget import CallBudget, TenantTokens
from .context import ContextAssembler
from .events import EventRecorder
from .lifecycle import ReplicaDraining
from .messaging import SEND_TOOL, Messenger
from .observability import OrchestratorMetrics
from .ports import ModelGateway, SessionStore
from .preferences import SessionScope
from .runtime import Ending, EngineSettings, Limits, Runtime, SessionFailure
from .strategies import strategy_for
from .termination import Terminated
from .tools import Tool
from .turns import TurnFailed, TurnRunner, UsageMeter

_logger = logging.getLogger(__name__)


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
        tenant_tokens: TenantTokens | None = None,
    ) -> None:
        self._context = context
        self._tenant_tokens = tenant_tokens
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
    ) -> Runtime:
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
        run = Runtime(
            tenant=tenant,
            settings=self._settings,
            store=self._store,
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
        turns.on_billed = lambda: run.save([])
        turns.budget = CallBudget(
            tenant=tenant,
            meter=meter,
            max_total_tokens=run.limits.max_total_tokens,
            tenant_tokens=self._tenant_tokens,
            min_call_tokens=self._settings.min_call_tokens,
        )
        turns.approvals = ApprovalGate(
            store=self._store,
            recorder=recorder,
            tenant=tenant,
            session=session.name,
            timeout_seconds=run.limits.approval_timeout_seconds,
            resumed=lambda: turns.reuse_recorded_calls,
            abandoned=lambda: run.abandoned,
        )
        return run

    async def run(
        self, run: Runtime, *, single_step: bool = False, resumed: bool = False
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

    async def _run(self, run: Runtime, *, single_step: bool, resumed: bool) -> sessions_pb2.Session:
        session = run.session
        if resumed:
            run.turns.reuse_recorded_calls = True
        try:
            if session.status == sessions_pb2.SESSION_STATUS_PENDING or resumed:
                self._start(run, resumed=resumed)
            ending = await self._drive(run, single_step=single_step)
            if ending is None:
                run.save(["rounds_completed", "usage"])
                await run.recorder.flush()
                return run.session
            await self._complete(run, ending)
        except asyncio.CancelledError:
            # A replica that lost the session's lease stops silently: the new owner goes on.
            if not run.abandoned and run.recorder.failure is None:
                await asyncio.shield(self._cancel(run, run.cancel_reason))
            raise
        except ReplicaDraining:
            raise  # stopped at a turn boundary: what ran is stored, the next owner goes on
        except Exception as error:
            if run.recorder.failure is not None:
                # The store refused a write (it is down, or the lease is lost): nothing more
                # can be recorded here; the caller sees why, the session's next owner goes on.
                raise
            await self._end_on_error(run, error)
        return run.session

    async def _end_on_error(self, run: Runtime, error: Exception) -> None:
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

    def _start(self, run: Runtime, *, resumed: bool) -> None:
        """Mark the session RUNNING and announce it. Buffered: stored with the first turn's
        writes, or within the flush interval when that turn is slow."""
        session = run.session
        session.status = sessions_pb2.SESSION_STATUS_RUNNING
        run.save(["status"])
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

    async def _drive(self, run: Runtime, *, single_step: bool) -> Ending | None:
        strategy = strategy_for(run.session.strategy)
        run.termination = strategy.termination(run)
        deadline = run.limits.deadline
        timeout = (
            max((deadline - dt.datetime.now(dt.UTC)).total_seconds(), 0.0) if deadline else None
        )
        try:
            async with asyncio.timeout(timeout):
                return await strategy.run(run, single_step=single_step)
        except Terminated as terminated:
            return await run.ending_for(terminated.stop)
        except TimeoutError:
            ending = await strategy.on_deadline(run)
            if ending is None:
                raise
            return ending

    # -- the one terminal path ---------------------------------------------------------------

    async def _complete(self, run: Runtime, ending: Ending) -> None:
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

    async def _fail(self, run: Runtime, status: status_pb2.Status) -> None:
        run.session.error.CopyFrom(status)
        await self._end(
            run,
            sessions_pb2.SESSION_STATUS_FAILED,
            ["error"],
            events_pb2.SessionEvent(
                session_failed=events_pb2.SessionFailed(error=status, usage=run.meter.snapshot())
            ),
        )

    async def _cancel(self, run: Runtime, reason: str) -> None:
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
        run: Runtime,
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
        run.save(["status", *fields, "rounds_completed"])
        await run.recorder.emit(terminal)
        await run.recorder.flush()


__all__ = [
    "Ending",
    "EngineSettings",
    "Limits",
    "Runtime",
    "SessionEngine",
    "SessionFailure",
]
