"""Due work and schedules: exclusive claims under concurrency (two replicas on PostgreSQL),
claim expiry and takeover fenced by epoch, completion, release, schedule runs and active runs.

Claims serve every tenant, so each test gets a database of its own: nothing another test left
due can be claimed here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from prometheus_client import CollectorRegistry

from agentmesh.common.v1 import sessions_pb2
from agentmesh.memory.v1 import memory_pb2, workflows_pb2_grpc
from agentmesh.memory.v1 import workflows_pb2 as wpb
from agentmesh.workflow.v1 import schedule_pb2
from agentmesh.workflow.v1 import workflow_pb2 as W
from agentmesh_common import MetricFactory
from agentmesh_memory.db import Database
from agentmesh_memory.db.migrate import migrate
from agentmesh_memory.store.base import StoreContext
from agentmesh_memory.store.workflow_sweep import ENDED_RUN_RETENTION, sweep_workflows
from agentmesh_memory.testing import (
    Api,
    PostgresServer,
    RunningMemory,
    afresh_database,
    memory_settings,
    rpc_error,
    start_memory,
    violation_fields,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer | None
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'due.db'}"
        await _migrate(url)
        yield url
        return
    if postgres is None:
        pytest.skip("no PostgreSQL server available")
    async with afresh_database(postgres, "agentmesh_due") as url:
        await _migrate(url)
        yield url


async def _migrate(url: str) -> None:
    db = Database.open(url, metrics=MetricFactory(CollectorRegistry()))
    try:
        await migrate(db)
    finally:
        await db.close()


@dataclass
class Mesh:
    flows: Api  # WorkflowStoreService, as the test's tenant
    memory: Api  # MemoryService, as the same tenant
    replicas: list[Api]  # WorkflowStoreService on each running server


@pytest.fixture
async def mesh(fresh_url: str, tenant: str) -> AsyncIterator[Mesh]:
    # Two memory replicas on PostgreSQL (the claim must hold across processes' pools); one
    # process owns an SQLite file.
    count = 1 if fresh_url.startswith("sqlite") else 2
    servers: list[RunningMemory] = [
        await start_memory(memory_settings(fresh_url)) for _ in range(count)
    ]
    channels = [grpc.aio.insecure_channel(s.address) for s in servers]
    try:
        stub = workflows_pb2_grpc.WorkflowStoreServiceStub
        yield Mesh(
            flows=Api(channels[0], tenant, stub),
            memory=Api(channels[0], tenant),
            replicas=[Api(c, tenant, stub) for c in channels],
        )
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop()


def at(delta: timedelta) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + delta)
    return stamp


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


async def token_with_work(flows: Api, count: int, due: timedelta = -timedelta(seconds=1)) -> str:
    await flows.CreateWorkflowRecord(
        wpb.CreateWorkflowRecordRequest(
            workflow=W.Workflow(places=[W.Place(id="a"), W.Place(id="b")]), workflow_id="wf"
        )
    )
    response = await flows.CreateTokenRecord(
        wpb.CreateTokenRecordRequest(
            parent="workflows/wf",
            token_id="t1",
            token=W.Token(place="a"),
            schedule=[
                wpb.DueWork(
                    place_agent=wpb.PlaceAgentWork(place_agent=f"agent-{i}", execution=1),
                    due_time=at(due + timedelta(milliseconds=i)),
                )
                for i in range(count)
            ],
        )
    )
    return str(response.token.name)


async def test_concurrent_claims_take_every_item_exactly_once(mesh: Mesh, tenant: str) -> None:
    items = 60
    await token_with_work(mesh.flows, items)
    claimed: list[tuple[str, int]] = []

    async def claimer(api: Api, owner: str) -> None:
        while True:
            response = await api.ClaimDueWork(
                wpb.ClaimDueWorkRequest(owner=owner, limit=3, lease=seconds(60))
            )
            if not response.items:
                return
            for item in response.items:
                assert item.tenant == tenant
                assert item.claim_epoch == 1
                claimed.append((owner, item.id))

    await asyncio.gather(
        *(
            claimer(mesh.replicas[index % len(mesh.replicas)], f"replica-{index}")
            for index in range(8)
        )
    )
    ids = [item_id for _, item_id in claimed]
    assert len(ids) == items
    assert len(set(ids)) == items  # nobody got an item twice
    assert len({owner for owner, _ in claimed}) > 1  # the claimers really ran side by side


async def test_an_expired_claim_is_taken_over_and_the_old_holder_is_fenced_off(
    mesh: Mesh,
) -> None:
    token = await token_with_work(mesh.flows, 1)
    first = await mesh.flows.ClaimDueWork(
        wpb.ClaimDueWorkRequest(owner="replica-a", limit=10, lease=seconds(0.5))
    )
    (item,) = first.items
    assert item.place_agent.token == token
    assert item.place_agent.place_agent == "agent-0"
    # While the claim holds, nobody else gets the item; next_due_time says when it may.
    held = await mesh.flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="replica-b"))
    assert list(held.items) == []
    assert held.next_due_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(seconds=1)
    deadline = time.monotonic() + 20
    while True:
        taken = await mesh.replicas[-1].ClaimDueWork(
            wpb.ClaimDueWorkRequest(owner="replica-b", lease=seconds(60))
        )
        if taken.items:
            break
        assert time.monotonic() < deadline, "the expired claim was never taken over"
        await asyncio.sleep(0.05)
    (again,) = taken.items
    assert (again.id, again.claim_epoch) == (item.id, item.claim_epoch + 1)

    stale = wpb.ClaimRef(id=item.id, owner="replica-a", claim_epoch=item.claim_epoch)
    lost = await rpc_error(
        mesh.flows.CompleteDueWork(wpb.CompleteDueWorkRequest(claim=stale)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert lost.reason == "CLAIM_LOST"
    # The old holder's transition, completing the item, is refused whole.
    refused = await rpc_error(
        mesh.flows.CommitToken(
            wpb.CommitTokenRequest(
                token=token,
                expected_revision=1,
                place="b",
                complete=stale,
                events=[W.WorkflowEvent(token_moved=W.TokenMoved(from_place="a", to_place="b"))],
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert refused.reason == "CLAIM_LOST"
    unchanged = await mesh.flows.GetTokenRecord(wpb.GetTokenRecordRequest(name=token))
    assert (unchanged.token.place, unchanged.token.revision) == ("a", 1)
    wf = await mesh.flows.GetWorkflowRecord(wpb.GetWorkflowRecordRequest(name="workflows/wf"))
    assert wf.workflow.last_event_seq == 0
    # Even the same owner with an old epoch is refused; the current claim completes.
    same_owner_old_epoch = wpb.ClaimRef(id=item.id, owner="replica-b", claim_epoch=1)
    await rpc_error(
        mesh.flows.CompleteDueWork(wpb.CompleteDueWorkRequest(claim=same_owner_old_epoch)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    current = wpb.ClaimRef(id=item.id, owner="replica-b", claim_epoch=again.claim_epoch)
    done = await mesh.flows.CommitToken(
        wpb.CommitTokenRequest(token=token, expected_revision=1, place="b", complete=current)
    )
    assert done.token.place == "b"
    # Completed: gone for good.
    await rpc_error(
        mesh.flows.CompleteDueWork(wpb.CompleteDueWorkRequest(claim=current)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_a_renewed_claim_outlives_its_first_lease_and_a_lost_one_cannot_be_renewed(
    mesh: Mesh,
) -> None:
    await token_with_work(mesh.flows, 1)
    (item,) = (
        await mesh.flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="replica-a", lease=seconds(1)))
    ).items
    claim = wpb.ClaimRef(id=item.id, owner="replica-a", claim_epoch=item.claim_epoch)
    renewed = await mesh.flows.RenewDueWork(wpb.RenewDueWorkRequest(claim=claim, lease=seconds(60)))
    assert renewed.expire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(seconds=50)
    await asyncio.sleep(1.5)  # past the first lease: the renewal keeps the item
    other = await mesh.flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="replica-b"))
    assert list(other.items) == []
    wrong = wpb.ClaimRef(id=item.id, owner="replica-b", claim_epoch=item.claim_epoch)
    lost = await rpc_error(
        mesh.flows.RenewDueWork(wpb.RenewDueWorkRequest(claim=wrong, lease=seconds(5))),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert lost.reason == "CLAIM_LOST"
    bad = await rpc_error(
        mesh.flows.RenewDueWork(wpb.RenewDueWorkRequest(claim=claim, lease=seconds(-1))), INVALID
    )
    assert violation_fields(bad) == {"lease"}


async def test_claims_wait_for_due_times_and_can_be_given_back_or_retried(mesh: Mesh) -> None:
    await mesh.flows.CreateWorkflowRecord(
        wpb.CreateWorkflowRecordRequest(
            workflow=W.Workflow(places=[W.Place(id="a")]), workflow_id="wf"
        )
    )
    later = at(timedelta(hours=1))
    await mesh.flows.CreateTokenRecord(
        wpb.CreateTokenRecordRequest(
            parent="workflows/wf",
            token_id="t1",
            token=W.Token(place="a"),
            schedule=[
                wpb.DueWork(
                    place_agent=wpb.PlaceAgentWork(place_agent="now"),
                    due_time=at(-timedelta(seconds=1)),
                ),
                wpb.DueWork(place_agent=wpb.PlaceAgentWork(place_agent="later"), due_time=later),
            ],
        )
    )
    first = await mesh.flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="a", limit=10))
    assert [i.place_agent.place_agent for i in first.items] == ["now"]
    assert first.next_due_time == later
    released = await mesh.flows.ReleaseDueWork(wpb.ReleaseDueWorkRequest(owner="a"))
    assert released.released == 1
    again = await mesh.flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="b", limit=10))
    (item,) = again.items
    assert item.claim_epoch == 2
    # A retry: the item stays, unclaimed, due later with the next attempt.
    retry_at = at(timedelta(minutes=5))
    await mesh.flows.CompleteDueWork(
        wpb.CompleteDueWorkRequest(
            claim=wpb.ClaimRef(id=item.id, owner="b", claim_epoch=2), due_again=retry_at, attempt=2
        )
    )
    nothing = await mesh.flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="c", limit=10))
    assert list(nothing.items) == []
    assert nothing.next_due_time == retry_at
    for bad, field in (
        (wpb.ClaimDueWorkRequest(), "owner"),
        (wpb.ClaimDueWorkRequest(owner="a", limit=101), "limit"),
        (wpb.ClaimDueWorkRequest(owner="a", lease=seconds(-1)), "lease"),
        (wpb.ClaimDueWorkRequest(owner="a", horizon=seconds(-1)), "horizon"),
        (wpb.ClaimDueWorkRequest(owner="a", horizon=seconds(11)), "horizon"),
        (wpb.ClaimDueWorkRequest(owner="a", lease=seconds(2), horizon=seconds(2)), "horizon"),
    ):
        assert violation_fields(await rpc_error(mesh.flows.ClaimDueWork(bad), INVALID)) == {field}


async def test_a_horizon_claims_items_due_soon_and_nothing_later(mesh: Mesh) -> None:
    """A claimer that starts items at their due time takes them a little early."""
    await mesh.flows.CreateWorkflowRecord(
        wpb.CreateWorkflowRecordRequest(
            workflow=W.Workflow(places=[W.Place(id="a")]), workflow_id="wf"
        )
    )
    soon, later = at(timedelta(seconds=3)), at(timedelta(seconds=30))
    await mesh.flows.CreateTokenRecord(
        wpb.CreateTokenRecordRequest(
            parent="workflows/wf",
            token_id="t1",
            token=W.Token(place="a"),
            schedule=[
                wpb.DueWork(place_agent=wpb.PlaceAgentWork(place_agent="soon"), due_time=soon),
                wpb.DueWork(place_agent=wpb.PlaceAgentWork(place_agent="later"), due_time=later),
            ],
        )
    )
    without = await mesh.flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="a", limit=10))
    assert list(without.items) == []
    assert without.next_due_time == soon
    early = await mesh.flows.ClaimDueWork(
        wpb.ClaimDueWorkRequest(owner="a", limit=10, lease=seconds(60), horizon=seconds(10))
    )
    (item,) = early.items
    assert (item.place_agent.place_agent, item.due_time) == ("soon", soon)
    assert early.next_due_time == later


async def _sweep(url: str, ahead: timedelta) -> int:
    """The sweeper's ended schedule runs, on a clock `ahead` of now."""
    db = Database.open(url, metrics=MetricFactory(CollectorRegistry()))
    try:
        context = StoreContext(db, clock=lambda: datetime.now(UTC) + ahead)
        _, runs = await sweep_workflows(context, timedelta(days=7))
        return runs
    finally:
        await db.close()


def schedule_template() -> schedule_pb2.Schedule:
    schedule = schedule_pb2.Schedule(
        description="nightly", session_template=sessions_pb2.Session(goal="summarize")
    )
    schedule.interval.FromTimedelta(timedelta(minutes=5))
    schedule.max_concurrent_runs = 2
    return schedule


async def finish(memory: Api, session: str) -> None:
    for status in (sessions_pb2.SESSION_STATUS_RUNNING, sessions_pb2.SESSION_STATUS_COMPLETED):
        await memory.UpdateSession(
            memory_pb2.UpdateSessionRequest(
                session=sessions_pb2.Session(name=session, status=status),
                update_mask={"paths": ["status"]},
            )
        )


async def test_schedule_runs_are_counted_and_active_runs_follow_their_sessions(
    mesh: Mesh, tenant: str, fresh_url: str
) -> None:
    flows = mesh.flows
    created = await flows.CreateScheduleRecord(
        wpb.CreateScheduleRecordRequest(
            schedule=schedule_template(),
            schedule_id="nightly",
            request_id="s-1",
            first_due_time=at(-timedelta(seconds=1)),
        )
    )
    name = "schedules/nightly"
    assert created.schedule.name == name
    assert created.schedule.next_run_time.seconds
    repeat = await flows.CreateScheduleRecord(
        wpb.CreateScheduleRecordRequest(
            schedule=schedule_template(),
            schedule_id="nightly",
            request_id="s-1",
            first_due_time=at(-timedelta(seconds=1)),
        )
    )
    assert repeat.schedule == created.schedule
    taken = await rpc_error(
        flows.CreateScheduleRecord(
            wpb.CreateScheduleRecordRequest(schedule=schedule_template(), schedule_id="nightly")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert taken.reason == "SCHEDULE_EXISTS"

    sessions = []
    for run in (1, 2):
        claim = await flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="r", limit=10))
        (item,) = claim.items  # the repeated create stored no second item
        assert (item.tenant, item.schedule.schedule) == (tenant, name)
        assert item.schedule.run_number == run
        session = await mesh.memory.CreateSession(
            memory_pb2.CreateSessionRequest(session=sessions_pb2.Session(goal="summarize"))
        )
        sessions.append(session.session.name)
        following = wpb.DueWork(
            schedule=wpb.ScheduleWork(schedule=name, run_number=run + 1),
            due_time=at(-timedelta(seconds=1) if run == 1 else timedelta(minutes=5)),
        )
        await flows.CompleteDueWork(
            wpb.CompleteDueWorkRequest(
                claim=wpb.ClaimRef(id=item.id, owner="r", claim_epoch=item.claim_epoch),
                schedule=[following],
                schedule_run_session=session.session.name,
            )
        )
    got = await flows.GetScheduleRecord(wpb.GetScheduleRecordRequest(name=name))
    assert got.schedule.runs_started == 2
    assert list(got.schedule.recent_sessions) == sessions[::-1]
    assert got.active_runs == 2
    assert got.schedule.next_run_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    await finish(mesh.memory, sessions[0])
    got = await flows.GetScheduleRecord(wpb.GetScheduleRecordRequest(name=name))
    assert got.active_runs == 1
    # The sweeper deletes the record of a run whose session ended, an hour on; the running
    # one stays, and so do the schedule's counter and recent sessions.
    assert await _sweep(fresh_url, ENDED_RUN_RETENTION - timedelta(minutes=1)) == 0
    assert await _sweep(fresh_url, ENDED_RUN_RETENTION + timedelta(minutes=1)) == 1
    swept = await flows.GetScheduleRecord(wpb.GetScheduleRecordRequest(name=name))
    assert swept.active_runs == 1
    assert swept.schedule.runs_started == 2
    assert list(swept.schedule.recent_sessions) == sessions[::-1]

    paused = await flows.UpdateScheduleRecord(
        wpb.UpdateScheduleRecordRequest(name=name, paused=True)
    )
    assert paused.schedule.paused
    assert paused.schedule.runs_started == 2
    listed = await flows.ListScheduleRecords(wpb.ListScheduleRecordsRequest())
    assert [s.name for s in listed.schedules] == [name]
    assert listed.schedules[0].next_run_time == got.schedule.next_run_time

    other = flows.as_tenant(f"{tenant}-other")
    for call in (
        other.GetScheduleRecord(wpb.GetScheduleRecordRequest(name=name)),
        other.UpdateScheduleRecord(wpb.UpdateScheduleRecordRequest(name=name)),
        other.DeleteScheduleRecord(wpb.DeleteScheduleRecordRequest(name=name)),
    ):
        error = await rpc_error(call, grpc.StatusCode.NOT_FOUND)
        assert error.reason == "SCHEDULE_NOT_FOUND"
    assert list((await other.ListScheduleRecords(wpb.ListScheduleRecordsRequest())).schedules) == []

    await flows.DeleteScheduleRecord(wpb.DeleteScheduleRecordRequest(name=name))
    await rpc_error(
        flows.GetScheduleRecord(wpb.GetScheduleRecordRequest(name=name)), grpc.StatusCode.NOT_FOUND
    )
    # Its due work went with it.
    empty = await flows.ClaimDueWork(wpb.ClaimDueWorkRequest(owner="r", limit=10))
    assert list(empty.items) == []
    assert not empty.HasField("next_due_time")
