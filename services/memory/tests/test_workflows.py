"""Workflow storage: records, tokens committed atomically with their events and due work,
idempotent retries, lists by place, watching, tenancy. Both engines (see conftest)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.memory.v1 import workflows_pb2 as wpb
from agentmesh.memory.v1 import workflows_pb2_grpc
from agentmesh.workflow.v1 import workflow_pb2 as W
from agentmesh_memory.db import Database
from agentmesh_memory.db.workflow_tables import due_work
from agentmesh_memory.store.base import StoreContext
from agentmesh_memory.store.workflow_sweep import sweep_workflows
from agentmesh_memory.testing import (
    Api,
    RunningMemory,
    memory_settings,
    rpc_error,
    start_memory,
    violation_fields,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def definition(*places: str) -> W.Workflow:
    return W.Workflow(
        display_name="review",
        places=[W.Place(id=p) for p in places],
        initial_place=places[0],
        transitions=[W.Transition(id="go", from_places=[places[0]], to_place=places[-1])],
    )


async def new_workflow(flows: Api, workflow_id: str, *places: str) -> str:
    response = await flows.CreateWorkflowRecord(
        wpb.CreateWorkflowRecordRequest(
            workflow=definition(*(places or ("draft", "review", "done"))), workflow_id=workflow_id
        )
    )
    return str(response.workflow.name)


def struct(**values: Any) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def at(delta: timedelta) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + delta)
    return stamp


def place_work(agent: str, due: timedelta = timedelta(hours=1)) -> wpb.DueWork:
    return wpb.DueWork(
        place_agent=wpb.PlaceAgentWork(place_agent=agent, execution=1), due_time=at(due)
    )


def created(place: str = "draft") -> W.WorkflowEvent:
    return W.WorkflowEvent(token_created=W.TokenCreated(place=place))


async def new_token(
    flows: Api, workflow: str, token_id: str, place: str = "draft", **kwargs: Any
) -> wpb.CreateTokenRecordResponse:
    response: wpb.CreateTokenRecordResponse = await flows.CreateTokenRecord(
        wpb.CreateTokenRecordRequest(
            parent=workflow,
            token_id=token_id,
            token=W.Token(place=place, data=struct(content="text")),
            **kwargs,
        )
    )
    return response


async def all_events(flows: Api, workflow: str, token: str = "") -> list[W.WorkflowEvent]:
    """Every event stored so far (of one token when given): watched up to the workflow's
    last_event_seq."""
    got = await flows.GetWorkflowRecord(wpb.GetWorkflowRecordRequest(name=workflow))
    last = got.workflow.last_event_seq
    seen: list[W.WorkflowEvent] = []
    if last == 0:
        return seen
    call = flows.WatchWorkflowEvents(wpb.WatchWorkflowEventsRequest(workflow=workflow))
    try:
        async with asyncio.timeout(20):
            while not seen or seen[-1].seq < last:
                response = await call.read()
                assert response is not grpc.aio.EOF
                seen.extend(response.events)
    finally:
        call.cancel()
    return [e for e in seen if not token or e.token == token]


async def due_of(db: Database, tenant: str) -> list[tuple[str, bytes]]:
    async with db.read("test") as conn:
        rows = await conn.execute(
            sa.select(due_work.c.kind, due_work.c.document)
            .where(due_work.c.tenant_id == tenant)
            .order_by(due_work.c.id)
        )
        return [(r.kind, r.document) for r in rows]


async def test_workflow_records_crud_and_their_errors(flows: Api) -> None:
    first = await flows.CreateWorkflowRecord(
        wpb.CreateWorkflowRecordRequest(
            workflow=definition("a", "b"), workflow_id="wf-one", request_id="r1"
        )
    )
    stored = first.workflow
    assert (stored.name, stored.revision, stored.places[1].id) == ("workflows/wf-one", 1, "b")
    assert stored.create_time.seconds
    assert stored.update_time == stored.create_time
    # A retry of the same request answers the first creation; another request with the id fails.
    again = await flows.CreateWorkflowRecord(
        wpb.CreateWorkflowRecordRequest(
            workflow=definition("a", "b"), workflow_id="wf-one", request_id="r1"
        )
    )
    assert again.workflow == stored
    error = await rpc_error(
        flows.CreateWorkflowRecord(
            wpb.CreateWorkflowRecordRequest(workflow=definition("a"), workflow_id="wf-one")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert error.reason == "WORKFLOW_EXISTS"
    for bad, field in (
        (
            wpb.CreateWorkflowRecordRequest(workflow=definition("a"), workflow_id="Bad"),
            "workflow_id",
        ),
        (
            wpb.CreateWorkflowRecordRequest(workflow=definition("a", "a"), workflow_id="x"),
            "workflow.places[1].id",
        ),
        (
            wpb.CreateWorkflowRecordRequest(workflow=definition("A b"), workflow_id="x"),
            "workflow.places[0].id",
        ),
    ):
        assert violation_fields(await rpc_error(flows.CreateWorkflowRecord(bad), INVALID)) == {
            field
        }
    # A generated id fits the id pattern.
    generated = await flows.CreateWorkflowRecord(
        wpb.CreateWorkflowRecordRequest(workflow=definition("a"))
    )
    assert generated.workflow.name.startswith("workflows/wf-")

    await new_workflow(flows, "wf-two")
    page = await flows.ListWorkflowRecords(wpb.ListWorkflowRecordsRequest(page_size=2))
    rest = await flows.ListWorkflowRecords(
        wpb.ListWorkflowRecordsRequest(page_size=2, page_token=page.next_page_token)
    )
    names = [w.name for w in [*page.workflows, *rest.workflows]]
    assert names == sorted(names)
    assert len(names) == 3
    assert not rest.next_page_token
    bad_page = await rpc_error(
        flows.ListWorkflowRecords(wpb.ListWorkflowRecordsRequest(page_size=1001)), INVALID
    )
    assert violation_fields(bad_page) == {"page_size"}

    changed = definition("a", "b", "c")
    changed.name = "workflows/wf-one"
    stale = await rpc_error(
        flows.UpdateWorkflowRecord(
            wpb.UpdateWorkflowRecordRequest(workflow=changed, expected_revision=7)
        ),
        grpc.StatusCode.ABORTED,
    )
    assert stale.reason == "REVISION_MISMATCH"
    assert stale.metadata["revision"] == "1"
    updated = await flows.UpdateWorkflowRecord(
        wpb.UpdateWorkflowRecordRequest(workflow=changed, expected_revision=1)
    )
    assert updated.workflow.revision == 2
    assert len(updated.workflow.places) == 3

    await flows.DeleteWorkflowRecord(wpb.DeleteWorkflowRecordRequest(name="workflows/wf-one"))
    missing = await rpc_error(
        flows.GetWorkflowRecord(wpb.GetWorkflowRecordRequest(name="workflows/wf-one")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert missing.reason == "WORKFLOW_NOT_FOUND"
    malformed = await rpc_error(
        flows.GetWorkflowRecord(wpb.GetWorkflowRecordRequest(name="workflow/x")), INVALID
    )
    assert violation_fields(malformed) == {"name"}


async def test_tokens_hold_places_the_definition_keeps_and_deletion_needs_force(
    flows: Api,
) -> None:
    workflow = await new_workflow(flows, "wf", "draft", "review", "done")
    for index in range(3):
        await new_token(flows, workflow, f"t{index}", "draft" if index < 2 else "review")
    got = await flows.GetWorkflowRecord(
        wpb.GetWorkflowRecordRequest(name=workflow, with_token_counts=True)
    )
    assert dict(got.workflow.token_counts) == {"draft": 2, "review": 1}

    narrower = definition("draft", "done")
    narrower.name = workflow
    error = await rpc_error(
        flows.UpdateWorkflowRecord(wpb.UpdateWorkflowRecordRequest(workflow=narrower)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "WORKFLOW_PLACES_IN_USE"
    assert error.metadata["places"] == "review"
    unchanged = await flows.GetWorkflowRecord(wpb.GetWorkflowRecordRequest(name=workflow))
    assert unchanged.workflow.revision == 1

    refused = await rpc_error(
        flows.DeleteWorkflowRecord(wpb.DeleteWorkflowRecordRequest(name=workflow)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert refused.reason == "WORKFLOW_HAS_TOKENS"
    await flows.DeleteWorkflowRecord(wpb.DeleteWorkflowRecordRequest(name=workflow, force=True))
    # Recreated under the same id, it starts empty: the old tokens and events are gone.
    await new_workflow(flows, "wf")
    gone = await rpc_error(
        flows.GetTokenRecord(wpb.GetTokenRecordRequest(name=f"{workflow}/tokens/t0")),
        grpc.StatusCode.NOT_FOUND,
    )
    assert gone.reason == "TOKEN_NOT_FOUND"
    assert await all_events(flows, workflow) == []


async def test_create_token_is_one_idempotent_transaction(
    flows: Api, db: Database, tenant: str
) -> None:
    workflow = await new_workflow(flows, "wf")
    first = await new_token(
        flows,
        workflow,
        "t1",
        request_id="create-1",
        events=[created()],
        schedule=[place_work("classifier")],
    )
    name = f"{workflow}/tokens/t1"
    assert first.token.name == name
    assert first.token.revision == 1
    assert first.last_seq == 1
    assert first.token.data == struct(content="text")
    # The retry writes nothing and answers the token first created.
    again = await new_token(
        flows,
        workflow,
        "t1",
        request_id="create-1",
        events=[created()],
        schedule=[place_work("classifier")],
    )
    assert again.token == first.token
    assert again.last_seq == 1
    events = await all_events(flows, workflow)
    assert [(e.seq, e.token, e.WhichOneof("payload")) for e in events] == [
        (1, name, "token_created")
    ]
    work = await due_of(db, tenant)
    assert len(work) == 1
    assert wpb.DueWork.FromString(work[0][1]).place_agent.token == name

    taken = await rpc_error(new_token(flows, workflow, "t1"), grpc.StatusCode.ALREADY_EXISTS)
    assert taken.reason == "TOKEN_EXISTS"
    # A bad token writes nothing, events and due work included.
    nowhere = await rpc_error(
        new_token(flows, workflow, "t2", "limbo", events=[created()], schedule=[place_work("x")]),
        INVALID,
    )
    assert violation_fields(nowhere) == {"token.place"}
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(26):
        node["n"] = {}
        node = node["n"]
    too_deep = await rpc_error(
        flows.CreateTokenRecord(
            wpb.CreateTokenRecordRequest(
                parent=workflow, token_id="t3", token=W.Token(place="draft", data=struct(**deep))
            )
        ),
        INVALID,
    )
    assert violation_fields(too_deep) == {"token.data"}
    not_finite = await rpc_error(
        flows.CreateTokenRecord(
            wpb.CreateTokenRecordRequest(
                parent=workflow,
                token_id="t4",
                token=W.Token(place="draft", metadata=struct(score=float("nan"))),
            )
        ),
        INVALID,
    )
    assert violation_fields(not_finite) == {"token.metadata.score"}
    foreign_event = W.WorkflowEvent(workflow="workflows/other", token_created=W.TokenCreated())
    wrong = await rpc_error(new_token(flows, workflow, "t5", events=[foreign_event]), INVALID)
    assert violation_fields(wrong) == {"events[0].workflow"}
    assert len(await all_events(flows, workflow)) == 1
    assert len(await due_of(db, tenant)) == 1


def move(transition: str, src: str, dst: str) -> W.TokenMove:
    return W.TokenMove(
        transition=transition, from_place=src, to_place=dst, fired_by=W.FIRED_BY_CALL
    )


def completed(src: str, dst: str) -> W.WorkflowEvent:
    return W.WorkflowEvent(
        transition_completed=W.TransitionCompleted(transition="go", from_place=src, to_place=dst)
    )


async def test_commit_moves_the_token_and_cancels_the_old_places_due_work(
    flows: Api, db: Database, tenant: str
) -> None:
    workflow = await new_workflow(flows, "wf")
    await new_token(flows, workflow, "t1", schedule=[place_work("drafter"), place_work("other")])
    await new_token(flows, workflow, "t2", schedule=[place_work("drafter")])
    name = f"{workflow}/tokens/t1"
    # A change that stays in the place keeps its due work.
    stay = await flows.CommitToken(
        wpb.CommitTokenRequest(token=name, expected_revision=1, metadata=struct(seen=True))
    )
    assert stay.token.revision == 2
    assert stay.last_seq == 0
    assert stay.token.metadata["seen"]
    assert len(await due_of(db, tenant)) == 3

    moved = await flows.CommitToken(
        wpb.CommitTokenRequest(
            token=name,
            expected_revision=2,
            place="review",
            data=struct(content="text", review="ok"),
            move=move("go", "draft", "review"),
            events=[completed("draft", "review"), W.WorkflowEvent(token_moved=W.TokenMoved())],
            schedule=[place_work("reviewer")],
        )
    )
    token = moved.token
    assert (token.place, token.revision, token.data["review"]) == ("review", 3, "ok")
    assert [m.to_place for m in token.history] == ["review"]
    assert token.metadata["seen"]  # metadata not sent: kept
    assert moved.last_seq == 2
    work = [wpb.DueWork.FromString(doc).place_agent for _, doc in await due_of(db, tenant)]
    # t1's two items of its stay in draft are gone; t2's stays; t1's new one is there.
    assert sorted((w.token.rpartition("/")[2], w.place_agent) for w in work) == [
        ("t1", "reviewer"),
        ("t2", "drafter"),
    ]
    got = await flows.GetTokenRecord(wpb.GetTokenRecordRequest(name=name))
    assert got.token == token
    events = await all_events(flows, workflow, token=name)
    assert [e.seq for e in events] == [1, 2]
    assert all(e.token == name for e in events)

    nowhere = await rpc_error(
        flows.CommitToken(wpb.CommitTokenRequest(token=name, expected_revision=3, place="limbo")),
        INVALID,
    )
    assert violation_fields(nowhere) == {"place"}


async def test_an_update_schedules_its_arrivals_for_the_tokens_already_there(
    flows: Api, db: Database, tenant: str
) -> None:
    workflow = await new_workflow(flows, "wf")
    await new_token(flows, workflow, "t1")
    await new_token(flows, workflow, "t2")
    await new_token(flows, workflow, "t3", place="review")
    # t2 changed once in its place: its item carries the revision it has now.
    await flows.CommitToken(
        wpb.CommitTokenRequest(
            token=f"{workflow}/tokens/t2", expected_revision=1, metadata=struct(seen=True)
        )
    )
    changed = definition("draft", "review", "done")
    changed.name = workflow
    bad = await rpc_error(
        flows.UpdateWorkflowRecord(
            wpb.UpdateWorkflowRecordRequest(
                workflow=changed,
                arrivals=[
                    wpb.PlaceArrival(place="limbo", work=place_work("drafter")),
                    wpb.PlaceArrival(place="draft", work=wpb.DueWork(place_agent={})),
                ],
            )
        ),
        INVALID,
    )
    assert violation_fields(bad) == {
        "arrivals[0].place",
        "arrivals[1].due_time",
        "arrivals[1].place_agent.place_agent",
    }
    assert await due_of(db, tenant) == [], "a refused update schedules nothing"
    updated = await flows.UpdateWorkflowRecord(
        wpb.UpdateWorkflowRecordRequest(
            workflow=changed, arrivals=[wpb.PlaceArrival(place="draft", work=place_work("drafter"))]
        )
    )
    assert updated.workflow.revision == 2
    work = [wpb.DueWork.FromString(doc).place_agent for _, doc in await due_of(db, tenant)]
    assert sorted((w.token.rpartition("/")[2], w.place_agent, w.stay_revision) for w in work) == [
        ("t1", "drafter", 1),
        ("t2", "drafter", 2),
    ]
    # A move out of the place cancels the item, as it does an arrival's.
    await flows.CommitToken(
        wpb.CommitTokenRequest(
            token=f"{workflow}/tokens/t1",
            expected_revision=1,
            place="review",
            move=move("go", "draft", "review"),
        )
    )
    work = [wpb.DueWork.FromString(doc).place_agent for _, doc in await due_of(db, tenant)]
    assert [w.token.rpartition("/")[2] for w in work] == ["t2"]


async def test_a_refused_commit_writes_nothing(flows: Api, db: Database, tenant: str) -> None:
    workflow = await new_workflow(flows, "wf")
    name = f"{workflow}/tokens/t1"
    await new_token(flows, workflow, "t1", events=[created()], schedule=[place_work("drafter")])
    item_id = await _only_due_id(db, tenant)
    change = {
        "token": name,
        "place": "review",
        "data": struct(changed=True),
        "move": move("go", "draft", "review"),
        "events": [completed("draft", "review")],
        "schedule": [place_work("reviewer")],
        "fire_request_id": "fire-1",
        "fired": True,
    }
    stale = await rpc_error(
        flows.CommitToken(wpb.CommitTokenRequest(expected_revision=5, **change)),
        grpc.StatusCode.ABORTED,
    )
    assert stale.reason == "REVISION_MISMATCH"
    assert stale.metadata["revision"] == "1"
    # Completing an item under a claim nobody holds: the claim is lost, nothing is written.
    lost = await rpc_error(
        flows.CommitToken(
            wpb.CommitTokenRequest(
                expected_revision=1,
                complete=wpb.ClaimRef(id=item_id, owner="replica-a", claim_epoch=1),
                **change,
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert lost.reason == "CLAIM_LOST"
    token = (await flows.GetTokenRecord(wpb.GetTokenRecordRequest(name=name))).token
    assert (token.place, token.revision, list(token.history)) == ("draft", 1, [])
    assert token.data == struct(content="text")
    assert [e.seq for e in await all_events(flows, workflow)] == [1]
    assert await _only_due_id(db, tenant) == item_id
    outcome = await flows.GetFireOutcome(wpb.GetFireOutcomeRequest(token=name, request_id="fire-1"))
    assert not outcome.found


async def _only_due_id(db: Database, tenant: str) -> int:
    async with db.read("test") as conn:
        ids = (
            await conn.execute(sa.select(due_work.c.id).where(due_work.c.tenant_id == tenant))
        ).scalars()
        (only,) = list(ids)
        return int(only)


async def test_a_fire_request_id_applies_once_for_the_retention_window(
    flows: Api, db: Database
) -> None:
    workflow = await new_workflow(flows, "wf")
    name = f"{workflow}/tokens/t1"
    await new_token(flows, workflow, "t1", events=[created()])
    request = wpb.CommitTokenRequest(
        token=name,
        expected_revision=1,
        place="review",
        move=move("go", "draft", "review"),
        events=[completed("draft", "review")],
        fire_request_id="fire-1",
        fired=True,
    )
    first = await flows.CommitToken(request)
    assert first.last_seq == 2
    assert first.token.revision == 2
    # The retry (its expected revision now stale) answers the outcome and writes nothing.
    again = await flows.CommitToken(request)
    assert again.token == first.token
    assert again.last_seq == 2
    assert len(await all_events(flows, workflow)) == 2
    assert len(again.token.history) == 1
    outcome = await flows.GetFireOutcome(wpb.GetFireOutcomeRequest(token=name, request_id="fire-1"))
    assert (outcome.found, outcome.fired, outcome.event_seq) == (True, True, 2)
    # The orchestrator's one read before a fire: token, workflow and remembered outcome.
    read = await flows.GetTokenRecord(
        wpb.GetTokenRecordRequest(name=name, fire_request_id="fire-1", with_workflow=True)
    )
    assert read.token == again.token
    assert read.fire_outcome == outcome
    assert (read.workflow.name, read.workflow.revision) == (workflow, 1)
    assert [p.id for p in read.workflow.places] == ["draft", "review", "done"]
    unknown = await flows.GetTokenRecord(
        wpb.GetTokenRecordRequest(name=name, fire_request_id="never")
    )
    assert not unknown.fire_outcome.found
    assert not unknown.HasField("workflow")
    failed = await flows.CommitToken(
        wpb.CommitTokenRequest(
            token=name,
            expected_revision=2,
            events=[W.WorkflowEvent(transition_failed=W.TransitionFailed(transition="go"))],
            fire_request_id="fire-2",
            fired=False,
        )
    )
    outcome = await flows.GetFireOutcome(wpb.GetFireOutcomeRequest(token=name, request_id="fire-2"))
    assert (outcome.found, outcome.fired, outcome.event_seq) == (True, False, failed.last_seq)
    # The sweeper keeps outcomes as long as request ids, then deletes them.
    retention = timedelta(days=7)
    await sweep_workflows(StoreContext(db), retention)
    for request_id in ("fire-1", "fire-2"):
        kept = wpb.GetFireOutcomeRequest(token=name, request_id=request_id)
        assert (await flows.GetFireOutcome(kept)).found
    later = retention + timedelta(minutes=1)
    outcomes, _ = await sweep_workflows(
        StoreContext(db, clock=lambda: datetime.now(UTC) + later), retention
    )
    assert outcomes >= 2
    for request_id in ("fire-1", "fire-2"):
        gone = wpb.GetFireOutcomeRequest(token=name, request_id=request_id)
        assert not (await flows.GetFireOutcome(gone)).found


async def test_list_tokens_by_place_pages_oldest_first(flows: Api) -> None:
    workflow = await new_workflow(flows, "wf")
    for index in range(8):
        await new_token(flows, workflow, f"t{index}", "draft" if index % 3 else "review")
    in_draft = [f"t{i}" for i in range(8) if i % 3]
    seen: list[str] = []
    page_token = ""
    pages = 0
    while True:
        page = await flows.ListTokenRecords(
            wpb.ListTokenRecordsRequest(
                parent=workflow, place="draft", page_size=2, page_token=page_token
            )
        )
        pages += 1
        seen.extend(t.name.rpartition("/")[2] for t in page.tokens)
        assert all(t.place == "draft" for t in page.tokens)
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen == in_draft
    assert pages == 3
    everything = await flows.ListTokenRecords(wpb.ListTokenRecordsRequest(parent=workflow))
    assert [t.name.rpartition("/")[2] for t in everything.tokens] == [f"t{i}" for i in range(8)]
    first = await flows.ListTokenRecords(
        wpb.ListTokenRecordsRequest(parent=workflow, place="draft", page_size=2)
    )
    foreign = await rpc_error(
        flows.ListTokenRecords(
            wpb.ListTokenRecordsRequest(
                parent=workflow, place="review", page_token=first.next_page_token
            )
        ),
        INVALID,
    )
    assert violation_fields(foreign) == {"page_token"}


async def test_watch_replays_then_tails_and_ends_with_the_workflow(flows: Api) -> None:
    workflow = await new_workflow(flows, "wf")
    await new_token(flows, workflow, "t1", events=[created()])
    await new_token(flows, workflow, "t2", events=[created()])
    t1 = f"{workflow}/tokens/t1"
    everything = flows.WatchWorkflowEvents(wpb.WatchWorkflowEventsRequest(workflow=workflow))
    only_t1 = flows.WatchWorkflowEvents(
        wpb.WatchWorkflowEventsRequest(workflow=workflow, token=t1, after_seq=0)
    )
    resumed = flows.WatchWorkflowEvents(
        wpb.WatchWorkflowEventsRequest(workflow=workflow, after_seq=1)
    )

    async def collect(call: Any, count: int) -> list[int]:
        seqs: list[int] = []
        async with asyncio.timeout(20):
            while len(seqs) < count:
                response = await call.read()
                assert response is not grpc.aio.EOF
                seqs.extend(e.seq for e in response.events)
        return seqs

    assert await collect(everything, 2) == [1, 2]
    assert await collect(only_t1, 1) == [1]
    assert await collect(resumed, 1) == [2]
    # Live: appended after the watches caught up.
    for index in range(3):
        await flows.AppendWorkflowEvents(
            wpb.AppendWorkflowEventsRequest(
                workflow=workflow,
                events=[
                    W.WorkflowEvent(
                        token=f"{workflow}/tokens/t{1 + index % 2}",
                        transition_started=W.TransitionStarted(transition="go"),
                    )
                ],
            )
        )
    # A retried append (same request_id) appends nothing and answers the first seqs.
    retried = wpb.AppendWorkflowEventsRequest(
        workflow=workflow,
        request_id="append-1",
        events=[W.WorkflowEvent(agent_run=W.AgentRun(transition="go", attempt=1))],
    )
    first = await flows.AppendWorkflowEvents(retried)
    second = await flows.AppendWorkflowEvents(retried)
    assert (first.first_seq, first.last_seq) == (second.first_seq, second.last_seq) == (6, 6)
    assert await collect(everything, 4) == [3, 4, 5, 6]
    assert await collect(only_t1, 2) == [3, 5]
    assert await collect(resumed, 4) == [3, 4, 5, 6]
    await flows.DeleteWorkflowRecord(wpb.DeleteWorkflowRecordRequest(name=workflow, force=True))
    for call in (everything, only_t1, resumed):
        async with asyncio.timeout(20):
            assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

    missing = flows.WatchWorkflowEvents(wpb.WatchWorkflowEventsRequest(workflow=workflow))
    error = await rpc_error(missing.read(), grpc.StatusCode.NOT_FOUND)
    assert error.reason == "WORKFLOW_NOT_FOUND"


async def test_another_tenant_sees_nothing(flows: Api) -> None:
    workflow = await new_workflow(flows, "wf")
    await new_token(flows, workflow, "t1")
    token = f"{workflow}/tokens/t1"
    other = flows.as_tenant(f"{flows.tenant}-other")
    not_found = grpc.StatusCode.NOT_FOUND
    for call in (
        other.GetWorkflowRecord(wpb.GetWorkflowRecordRequest(name=workflow)),
        other.GetTokenRecord(wpb.GetTokenRecordRequest(name=token)),
        other.CommitToken(wpb.CommitTokenRequest(token=token, expected_revision=1)),
        other.CreateTokenRecord(
            wpb.CreateTokenRecordRequest(parent=workflow, token=W.Token(place="draft"))
        ),
        other.ListTokenRecords(wpb.ListTokenRecordsRequest(parent=workflow)),
        other.DeleteWorkflowRecord(wpb.DeleteWorkflowRecordRequest(name=workflow, force=True)),
        other.GetFireOutcome(wpb.GetFireOutcomeRequest(token=token, request_id="r")),
        other.AppendWorkflowEvents(
            wpb.AppendWorkflowEventsRequest(workflow=workflow, events=[created()])
        ),
        other.WatchWorkflowEvents(wpb.WatchWorkflowEventsRequest(workflow=workflow)).read(),
    ):
        await rpc_error(call, not_found)
    listed = await other.ListWorkflowRecords(wpb.ListWorkflowRecordsRequest())
    assert list(listed.workflows) == []
    # The same id is free for the other tenant, and the first tenant's workflow is untouched.
    await new_workflow(other, "wf")
    mine = await flows.GetTokenRecord(wpb.GetTokenRecordRequest(name=token))
    assert mine.token.revision == 1


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (wpb.CommitTokenRequest(token="workflows/wf/tokens/t1"), "expected_revision"),
        (wpb.CommitTokenRequest(token="workflows/wf/t1", expected_revision=1), "token"),
        (
            wpb.CommitTokenRequest(
                token="workflows/wf/tokens/t1",
                expected_revision=1,
                schedule=[wpb.DueWork(place_agent=wpb.PlaceAgentWork(place_agent="a"))],
            ),
            "schedule[0].due_time",
        ),
        (
            wpb.CommitTokenRequest(
                token="workflows/wf/tokens/t1",
                expected_revision=1,
                events=[W.WorkflowEvent()],
            ),
            "events[0]",
        ),
        (
            wpb.CommitTokenRequest(
                token="workflows/wf/tokens/t1",
                expected_revision=1,
                complete=wpb.ClaimRef(id=1),
            ),
            "complete.owner",
        ),
    ],
)
async def test_bad_commits_name_their_field(
    flows: Api, request_: wpb.CommitTokenRequest, field: str
) -> None:
    await new_workflow(flows, "wf")
    assert violation_fields(await rpc_error(flows.CommitToken(request_), INVALID)) == {field}


async def test_a_watch_on_another_replica_tails_by_notification(
    postgres_url: str, tenant: str
) -> None:
    """Replica B polls only every minute: events and the deletion appended through replica A
    must reach B's watch by PostgreSQL notification (the workflow channel)."""
    a = await start_memory(memory_settings(postgres_url))
    b = await start_memory(memory_settings(postgres_url, watch_poll_seconds="60"))
    stub = workflows_pb2_grpc.WorkflowStoreServiceStub
    try:
        async with (
            grpc.aio.insecure_channel(a.address) as channel_a,
            grpc.aio.insecure_channel(b.address) as channel_b,
        ):
            on_a, on_b = Api(channel_a, tenant, stub), Api(channel_b, tenant, stub)
            workflow = await new_workflow(on_a, "wf")
            await new_token(on_a, workflow, "t1", events=[created()])
            watch = on_b.WatchWorkflowEvents(wpb.WatchWorkflowEventsRequest(workflow=workflow))
            async with asyncio.timeout(20):
                first = await watch.read()
            assert [e.seq for e in first.events] == [1]
            await on_a.AppendWorkflowEvents(
                wpb.AppendWorkflowEventsRequest(workflow=workflow, events=[created()])
            )
            async with asyncio.timeout(20):
                second = await watch.read()
            assert [e.seq for e in second.events] == [2]
            await on_a.DeleteWorkflowRecord(
                wpb.DeleteWorkflowRecordRequest(name=workflow, force=True)
            )
            async with asyncio.timeout(20):
                assert await watch.read() is grpc.aio.EOF
    finally:
        await b.stop()
        await a.stop()


async def test_the_workflow_store_has_its_own_health_status(server: RunningMemory) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="agentmesh.memory.v1.WorkflowStoreService"),
            timeout=5,
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
