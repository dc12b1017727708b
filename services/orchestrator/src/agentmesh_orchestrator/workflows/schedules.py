"""Schedules: a session template started at an interval or by a cron expression.

Each run is due work in the memory service (`ScheduleWork`, run number n). The replica that
claims it starts the session, named by a key of the schedule and n, so a replica that takes
the item over after a crash finds that session instead of starting a second; then it
completes the item and schedules run n+1 in one commit. Runs missed while no replica was up
are skipped, not made up: the next run is the first due time after now. A paused schedule
moves its due time on without starting anything; at its concurrency cap, the run waits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentmesh.common.v1 import sessions_pb2
from agentmesh.memory.v1 import workflows_pb2 as store_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2
from agentmesh.workflow.v1 import schedule_pb2
from agentmesh_common import InvalidArgument, NotFound

from .cron import Cron, CronError
from .cron import parse as parse_cron
from .definition import goal_faults, render_goal
from .engine import WorkflowEngine, run_key
from .runs import SessionRunner, create_or_find

MIN_INTERVAL = dt.timedelta(seconds=1)
MAX_INTERVAL = dt.timedelta(days=366)
MAX_CONCURRENT_RUNS = 100
MAX_RUNS = 1_000_000
BUSY_RETRY = dt.timedelta(seconds=1)
RUN_VARIABLES = ("schedule", "run_number", "due_time")

StartRun = Callable[[str, sessions_pb2.Session], Awaitable[None]]


@dataclass(frozen=True)
class CompiledSchedule:
    interval: dt.timedelta | None
    cron: Cron | None
    zone: dt.tzinfo

    def first_due(self, schedule: schedule_pb2.Schedule, now: dt.datetime) -> dt.datetime:
        if schedule.HasField("start_time"):
            return schedule.start_time.ToDatetime(dt.UTC)
        return self.next_due(now, now)

    def next_due(self, due: dt.datetime, now: dt.datetime) -> dt.datetime:
        """The first due time after `due` that is not in the past."""
        if self.interval is not None:
            missed = max(0, (now - due) // self.interval)
            return due + self.interval * (missed + 1)
        assert self.cron is not None
        return self.cron.next_after(max(due, now), self.zone)


def compile_schedule(schedule: schedule_pb2.Schedule, at: str = "schedule") -> CompiledSchedule:
    """Check a schedule; InvalidArgument names the field."""
    template = schedule.session_template
    if not template.goal.strip():
        raise InvalidArgument.for_field(f"{at}.session_template.goal", "required")
    faults = goal_faults(template.goal, set(template.metadata) | set(RUN_VARIABLES))
    if faults:
        raise InvalidArgument.for_field(f"{at}.session_template.goal", faults[0])
    if not template.agents and not template.inline_agents:
        raise InvalidArgument.for_field(f"{at}.session_template.agents", "name at least one agent")
    trigger = schedule.WhichOneof("trigger")
    if trigger is None:
        raise InvalidArgument.for_field(f"{at}.trigger", "set interval or cron")
    zone: dt.tzinfo = dt.UTC
    if schedule.time_zone:
        if trigger != "cron":
            raise InvalidArgument.for_field(f"{at}.time_zone", "applies to a cron schedule only")
        try:
            zone = ZoneInfo(schedule.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument.for_field(
                f"{at}.time_zone", f"{schedule.time_zone!r} is not an IANA time zone"
            ) from None
    if not 0 <= schedule.max_concurrent_runs <= MAX_CONCURRENT_RUNS:
        raise InvalidArgument.for_field(
            f"{at}.max_concurrent_runs", f"must be between 0 and {MAX_CONCURRENT_RUNS}"
        )
    if not 0 <= schedule.max_runs <= MAX_RUNS:
        raise InvalidArgument.for_field(f"{at}.max_runs", f"must be between 0 and {MAX_RUNS}")
    if trigger == "interval":
        interval = schedule.interval.ToTimedelta()
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise InvalidArgument.for_field(f"{at}.interval", "must be between 1 s and 366 days")
        return CompiledSchedule(interval=interval, cron=None, zone=zone)
    try:
        cron = parse_cron(schedule.cron)
    except CronError as error:
        raise InvalidArgument.for_field(f"{at}.cron", str(error)) from None
    return CompiledSchedule(interval=None, cron=cron, zone=zone)


def session_for_run(
    schedule: schedule_pb2.Schedule, run_number: int, due: dt.datetime
) -> sessions_pb2.Session:
    """The session run `run_number` starts: the template with the run's variables."""
    session = sessions_pb2.Session()
    session.CopyFrom(schedule.session_template)
    session.metadata["schedule"] = schedule.name
    session.metadata["run_number"] = str(run_number)
    session.metadata["due_time"] = due.isoformat().replace("+00:00", "Z")
    session.goal = render_goal(session.goal, dict(session.metadata))
    session.cancel_on_disconnect = False
    return session


@dataclass
class ScheduleRun:
    """One claimed run of a schedule."""

    engine: WorkflowEngine
    runner: SessionRunner
    start_run: StartRun
    tenant: str
    item: store_pb2.DueWork
    claim: store_pb2.ClaimRef

    async def run(self) -> None:
        work = self.item.schedule
        memory, store = self.engine.memory, self.engine.store
        try:
            reply = await memory.call(
                self.tenant,
                store.GetScheduleRecord,
                store_pb2.GetScheduleRecordRequest(name=work.schedule),
            )
        except NotFound:
            await self._complete()
            return
        schedule = reply.schedule
        compiled = compile_schedule(schedule)
        now = self.engine.now()
        due = self.item.due_time.ToDatetime(dt.UTC)
        if schedule.max_runs and work.run_number > schedule.max_runs:
            await self._complete()
            return
        if schedule.paused:
            await self._complete(due_again=compiled.next_due(due, now))
            return
        if reply.active_runs >= max(schedule.max_concurrent_runs, 1):
            await self._complete(due_again=now + BUSY_RETRY)
            return
        session = session_for_run(schedule, work.run_number, due)
        created = await create_or_find(
            self.runner,
            self.tenant,
            orchestrator_pb2.CreateSessionRequest(
                session=session, session_id=run_key(work.schedule, work.run_number)
            ),
        )
        await self.start_run(self.tenant, created)
        following = None
        if not schedule.max_runs or work.run_number < schedule.max_runs:
            following = store_pb2.DueWork(
                schedule=store_pb2.ScheduleWork(
                    schedule=work.schedule, run_number=work.run_number + 1
                ),
                attempt=1,
            )
            following.due_time.FromDatetime(compiled.next_due(due, now))
        await self._complete(following=following, session=created.name)

    async def _complete(
        self,
        *,
        due_again: dt.datetime | None = None,
        following: store_pb2.DueWork | None = None,
        session: str = "",
    ) -> None:
        request = store_pb2.CompleteDueWorkRequest(
            claim=self.claim, schedule_run_session=session, attempt=self.item.attempt
        )
        if due_again is not None:
            request.due_again.FromDatetime(due_again)
            self.engine.wake_for([store_pb2.DueWork(due_time=request.due_again)])
        if following is not None:
            request.schedule.append(following)
        await self.engine.memory.call(self.tenant, self.engine.store.CompleteDueWork, request)
        self.engine.wake_for(request.schedule)
