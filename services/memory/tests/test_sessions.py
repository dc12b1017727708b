"""Sessions (create, nesting, list, status machine) and leases."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from agentmesh.common.v1 import agents_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.testing import Api, rpc_error, violation_fields

S = sessions_pb2
PENDING, RUNNING = S.SESSION_STATUS_PENDING, S.SESSION_STATUS_RUNNING
COMPLETED, FAILED, CANCELLED = (
    S.SESSION_STATUS_COMPLETED,
    S.SESSION_STATUS_FAILED,
    S.SESSION_STATUS_CANCELLED,
)


async def new_session(api: Api, session_id: str = "", **fields: object) -> S.Session:
    fields.setdefault("goal", "write a haiku")
    response = await api.CreateSession(
        memory_pb2.CreateSessionRequest(session=S.Session(**fields), session_id=session_id)  # type: ignore[arg-type]
    )
    return response.session  # type: ignore[no-any-return]


async def set_status(api: Api, name: str, status: int) -> S.Session:
    response = await api.UpdateSession(
        memory_pb2.UpdateSessionRequest(
            session=S.Session(name=name, status=status),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        )
    )
    return response.session  # type: ignore[no-any-return]


async def test_create_starts_pending_and_ignores_output_only_fields(api: Api) -> None:
    session = await new_session(
        api,
        "s1",
        strategy=S.STRATEGY_ROUND_ROBIN,
        agents=["agents/a"],
        inline_agents=[
            agents_pb2.AgentDefinition(name="helper", type=agents_pb2.AGENT_TYPE_CRITIC)
        ],
        limits=S.SessionLimits(max_rounds=3),
        metadata={"lang": "en"},
        status=COMPLETED,
        final_answer="cheat",
        last_event_seq=99,
    )
    assert session.name == "sessions/s1"
    assert session.status == PENDING
    assert session.final_answer == ""
    assert session.last_event_seq == 0
    got = (await api.GetSession(memory_pb2.GetSessionRequest(name="sessions/s1"))).session
    assert got == session
    assert got.limits.max_rounds == 3
    assert dict(got.metadata) == {"lang": "en"}
    assert got.inline_agents[0].name == "helper"


async def test_generated_ids_and_duplicates(api: Api) -> None:
    first = await new_session(api)
    second = await new_session(api)
    assert first.name != second.name
    assert first.name.startswith("sessions/")
    await new_session(api, "fixed")
    await rpc_error(new_session(api, "fixed"), grpc.StatusCode.ALREADY_EXISTS)


async def test_create_with_request_id_is_idempotent(api: Api) -> None:
    request = memory_pb2.CreateSessionRequest(session=S.Session(goal="once"), request_id="r-1")
    first = (await api.CreateSession(request)).session
    second = (await api.CreateSession(request)).session
    assert first == second
    listed = await api.ListSessions(memory_pb2.ListSessionsRequest())
    assert len(listed.sessions) == 1


async def test_nesting_and_listing_by_parent_and_status(api: Api) -> None:
    parent = await new_session(api, "parent")
    children = [await new_session(api, f"child-{i}", parent="sessions/parent") for i in range(3)]
    assert all(c.parent == parent.name for c in children)
    await rpc_error(new_session(api, "orphan", parent="sessions/nope"), grpc.StatusCode.NOT_FOUND)
    listed = await api.ListSessions(memory_pb2.ListSessionsRequest(parent="sessions/parent"))
    assert [s.name for s in listed.sessions] == [c.name for c in reversed(children)]  # newest first
    await set_status(api, "sessions/child-1", RUNNING)
    running = await api.ListSessions(memory_pb2.ListSessionsRequest(status=RUNNING))
    assert [s.name for s in running.sessions] == ["sessions/child-1"]
    pages: list[str] = []
    token = ""
    while True:
        page = await api.ListSessions(memory_pb2.ListSessionsRequest(page_size=2, page_token=token))
        pages.extend(s.name for s in page.sessions)
        token = page.next_page_token
        if not token:
            break
    assert pages == ["sessions/child-2", "sessions/child-1", "sessions/child-0", "sessions/parent"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ([RUNNING], True),
        ([CANCELLED], True),
        ([RUNNING, COMPLETED], True),
        ([RUNNING, FAILED], True),
        ([RUNNING, CANCELLED], True),
        ([COMPLETED], False),
        ([FAILED], False),
        ([RUNNING, PENDING], False),
        ([RUNNING, COMPLETED, RUNNING], False),
        ([RUNNING, COMPLETED, FAILED], False),
        ([CANCELLED, RUNNING], False),
    ],
)
async def test_status_moves_only_forward(api: Api, path: list[int], allowed: bool) -> None:
    session = await new_session(api)
    for status in path[:-1]:
        await set_status(api, session.name, status)
    if allowed:
        updated = await set_status(api, session.name, path[-1])
        assert updated.status == path[-1]
        if path[-1] == RUNNING:
            assert updated.HasField("start_time")
        if path[-1] in (COMPLETED, FAILED, CANCELLED):
            assert updated.HasField("end_time")
    else:
        before = (await api.GetSession(memory_pb2.GetSessionRequest(name=session.name))).session
        error = await rpc_error(
            set_status(api, session.name, path[-1]), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert error.reason == "INVALID_STATUS_TRANSITION"
        after = (await api.GetSession(memory_pb2.GetSessionRequest(name=session.name))).session
        assert after.status == before.status


async def test_update_masked_fields_and_plan_with_tasks(api: Api) -> None:
    session = await new_session(api, "work")
    await set_status(api, session.name, RUNNING)
    change = S.Session(
        name=session.name,
        final_answer="done",
        rounds_completed=2,
        plan=S.Plan(revision=1, rationale="split it"),
        goal="ignored: not in the mask",
    )
    updated = (
        await api.UpdateSession(
            memory_pb2.UpdateSessionRequest(
                session=change,
                update_mask=field_mask_pb2.FieldMask(
                    paths=["final_answer", "rounds_completed", "plan"]
                ),
            )
        )
    ).session
    assert updated.final_answer == "done"
    assert updated.rounds_completed == 2
    assert updated.goal == "write a haiku"
    await api.BatchCreateTasks(
        memory_pb2.BatchCreateTasksRequest(
            parent=session.name, tasks=[S.Task(task_id="t1", description="one")]
        )
    )
    got = (await api.GetSession(memory_pb2.GetSessionRequest(name=session.name))).session
    assert got.plan.rationale == "split it"
    assert [t.name for t in got.plan.tasks] == ["sessions/work/tasks/t1"]
    for paths in ([], ["goal"], ["name"]):
        await rpc_error(
            api.UpdateSession(
                memory_pb2.UpdateSessionRequest(
                    session=S.Session(name=session.name),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )


@pytest.mark.parametrize(
    ("session", "field"),
    [
        (S.Session(goal=""), "session.goal"),
        (S.Session(goal="x" * 100_001), "session.goal"),
        (S.Session(goal="g", limits=S.SessionLimits(max_rounds=-1)), "session.limits.max_rounds"),
        (S.Session(goal="g", parent="nope"), "session.parent"),
        (S.Session(goal="g", agents=[""]), "session.agents[0]"),
    ],
)
async def test_create_rejects_bad_input(api: Api, session: S.Session, field: str) -> None:
    error = await rpc_error(
        api.CreateSession(memory_pb2.CreateSessionRequest(session=session)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in violation_fields(error)
    assert not (await api.ListSessions(memory_pb2.ListSessionsRequest())).sessions


def ttl(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


async def test_lease_acquire_renew_release_and_takeover(api: Api) -> None:
    session = await new_session(api, "leased")
    first = await api.AcquireLease(
        memory_pb2.AcquireLeaseRequest(session=session.name, owner="replica-a", ttl=ttl(0.5))
    )
    assert first.lease.owner == "replica-a"
    assert first.lease.epoch == 1
    assert not first.took_over
    held = (await api.GetSession(memory_pb2.GetSessionRequest(name=session.name))).session
    assert held.lease_owner == "replica-a"

    error = await rpc_error(
        api.AcquireLease(
            memory_pb2.AcquireLeaseRequest(session=session.name, owner="replica-b", ttl=ttl(5))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "LEASE_HELD"
    await rpc_error(
        api.RenewLease(
            memory_pb2.RenewLeaseRequest(session=session.name, owner="replica-b", ttl=ttl(5))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await rpc_error(
        api.ReleaseLease(memory_pb2.ReleaseLeaseRequest(session=session.name, owner="replica-b")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    renewed = await api.RenewLease(
        memory_pb2.RenewLeaseRequest(session=session.name, owner="replica-a", ttl=ttl(0.3))
    )
    assert renewed.lease.epoch == 1
    # Repeating the acquisition as the holder extends it without a new epoch.
    again = await api.AcquireLease(
        memory_pb2.AcquireLeaseRequest(session=session.name, owner="replica-a", ttl=ttl(0.3))
    )
    assert again.lease.epoch == 1

    await set_status(api, session.name, RUNNING)
    await asyncio.sleep(0.45)  # the lease expires
    expired = await api.ListSessions(memory_pb2.ListSessionsRequest(lease_expired_only=True))
    assert [s.name for s in expired.sessions] == [session.name]
    taken = await api.AcquireLease(
        memory_pb2.AcquireLeaseRequest(session=session.name, owner="replica-b", ttl=ttl(5))
    )
    assert taken.took_over
    assert taken.lease.owner == "replica-b"
    assert taken.lease.epoch == 2
    assert not (
        await api.ListSessions(memory_pb2.ListSessionsRequest(lease_expired_only=True))
    ).sessions
    # The old owner can no longer renew or release.
    await rpc_error(
        api.RenewLease(
            memory_pb2.RenewLeaseRequest(session=session.name, owner="replica-a", ttl=ttl(5))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await api.ReleaseLease(memory_pb2.ReleaseLeaseRequest(session=session.name, owner="replica-b"))
    free = await api.AcquireLease(
        memory_pb2.AcquireLeaseRequest(session=session.name, owner="replica-c", ttl=ttl(5))
    )
    assert not free.took_over
    assert free.lease.epoch == 3


async def test_concurrent_acquisitions_have_one_winner(api: Api) -> None:
    session = await new_session(api)
    results = await asyncio.gather(
        *(
            api.AcquireLease(
                memory_pb2.AcquireLeaseRequest(session=session.name, owner=f"r{i}", ttl=ttl(30))
            )
            for i in range(10)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, memory_pb2.AcquireLeaseResponse)]
    assert len(winners) == 1
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in losers)


async def test_lease_input_is_validated(api: Api) -> None:
    session = await new_session(api)
    await rpc_error(
        api.AcquireLease(memory_pb2.AcquireLeaseRequest(session=session.name, owner="")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await rpc_error(
        api.AcquireLease(
            memory_pb2.AcquireLeaseRequest(session=session.name, owner="a", ttl=ttl(7200))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await rpc_error(
        api.AcquireLease(memory_pb2.AcquireLeaseRequest(session="sessions/none", owner="a")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_orphaned_sessions_of_every_tenant_are_listed_with_their_tenant(api: Api) -> None:
    other = api.as_tenant(f"tenant-{uuid.uuid4().hex[:8]}")
    mine, theirs, healthy = (
        await new_session(api, "mine"),
        await new_session(other, "theirs"),
        await new_session(api, "healthy"),
    )
    for client, session, seconds in ((api, mine, 0.2), (other, theirs, 0.2), (api, healthy, 60)):
        await client.AcquireLease(
            memory_pb2.AcquireLeaseRequest(session=session.name, owner="dead", ttl=ttl(seconds))
        )
        await set_status(client, session.name, RUNNING)
    await asyncio.sleep(0.3)

    found: dict[str, str] = {}
    token = ""
    while True:
        page = await api.ListOrphanedSessions(
            memory_pb2.ListOrphanedSessionsRequest(page_size=1, page_token=token)
        )
        found.update({o.session.name: o.tenant for o in page.sessions})
        token = page.next_page_token
        if not token:
            break
    assert found[mine.name] == api.tenant
    assert found[theirs.name] == other.tenant
    assert healthy.name not in found
