"""CommitStep: a turn's ledger rows, messages, session change and events in one transaction."""

from __future__ import annotations

import asyncio
import time

import grpc
import grpc.aio
from google.protobuf import duration_pb2, field_mask_pb2

from agentmesh.common.v1 import events_pb2, generation_pb2, messages_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.testing import (
    Api,
    memory_settings,
    rpc_error,
    start_memory,
    violation_fields,
)

E, S = events_pb2, sessions_pb2
OK = memory_pb2.EXECUTION_OUTCOME_SUCCEEDED


async def new_session(api: Api, session_id: str = "step") -> str:
    response = await api.CreateSession(
        memory_pb2.CreateSessionRequest(session=S.Session(goal="g"), session_id=session_id)
    )
    return str(response.session.name)


def delta(text: str) -> E.SessionEvent:
    return E.SessionEvent(content_delta=E.ContentDelta(text=text))


def completed(answer: str = "done") -> E.SessionEvent:
    return E.SessionEvent(session_completed=E.SessionCompleted(final_answer=answer))


def text(
    content: str, role: int = messages_pb2.ROLE_ASSISTANT, **fields: object
) -> memory_pb2.StoredMessage:
    return memory_pb2.StoredMessage(
        message=messages_pb2.Message(role=role, content=content),  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def execution(
    *, session: str = "", key: str = "", prompt: int = 10, provider: str = "openai"
) -> memory_pb2.Execution:
    return memory_pb2.Execution(
        session=session,
        provider=provider,
        model="gpt-4o",
        attempt=1,
        latency=duration_pb2.Duration(nanos=300_000_000),
        usage=generation_pb2.Usage(prompt_tokens=prompt, completion_tokens=5),
        outcome=OK,
        idempotency_key=key,
    )


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def ttl(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


async def read_session(api: Api, session: str) -> S.Session:
    return (await api.GetSession(memory_pb2.GetSessionRequest(name=session))).session


async def stored_messages(api: Api, session: str) -> list[memory_pb2.StoredMessage]:
    return list((await api.ListMessages(memory_pb2.ListMessagesRequest(parent=session))).messages)


async def stored_executions(api: Api, session: str) -> list[memory_pb2.Execution]:
    listed = await api.ListExecutions(memory_pb2.ListExecutionsRequest(session=session))
    return list(listed.executions)


async def watch_all(api: Api, session: str, after_seq: int = 0) -> list[E.SessionEvent]:
    seen: list[E.SessionEvent] = []
    call = api.WatchEvents(
        memory_pb2.WatchEventsRequest(session=session, after_seq=after_seq), timeout=30
    )
    async for response in call:
        seen.extend(response.events)
    return seen


async def assert_untouched(api: Api, session: str, *, last_event_seq: int, status: int) -> None:
    """Nothing of a failed step is visible: no messages, no ledger rows, no change, no events."""
    assert await stored_messages(api, session) == []
    assert await stored_executions(api, session) == []
    got = await read_session(api, session)
    assert got.last_event_seq == last_event_seq
    assert got.status == status
    assert got.rounds_completed == 0


async def test_a_full_step_is_seen_by_every_read(api: Api) -> None:
    session = await new_session(api)
    step = await api.CommitStep(
        memory_pb2.CommitStepRequest(
            session=session,
            executions=[execution(key="turn-1"), execution(session=session, prompt=20)],
            messages=[
                text("question", role=messages_pb2.ROLE_USER),
                text("answer", name=f"{session}/messages/m-2", prompt_tokens=30, round=1),
            ],
            update=S.Session(status=S.SESSION_STATUS_RUNNING, rounds_completed=1),
            update_mask=mask("status", "rounds_completed"),
            events=[delta("ans"), delta("wer")],
        )
    )
    assert (step.first_seq, step.last_seq) == (1, 2)
    assert [e.session for e in step.executions] == [session, session]
    assert [e.usage.prompt_tokens for e in step.executions] == [10, 20]
    assert step.executions[0].idempotency_key == "turn-1"
    assert all(e.name.startswith("executions/") for e in step.executions)
    assert [m.message.content for m in step.messages] == ["question", "answer"]
    assert step.messages[1].name == f"{session}/messages/m-2"
    assert step.messages[0].name.startswith(f"{session}/messages/")
    assert step.session.status == S.SESSION_STATUS_RUNNING
    assert step.session.rounds_completed == 1

    assert await stored_messages(api, session) == list(step.messages)
    assert await stored_executions(api, session) == list(step.executions)
    got = await read_session(api, session)
    assert got.status == S.SESSION_STATUS_RUNNING
    assert got.rounds_completed == 1
    assert got.start_time.seconds
    assert got.last_event_seq == 2

    end = await api.CommitStep(
        memory_pb2.CommitStepRequest(
            session=session,
            update=S.Session(name=session, status=S.SESSION_STATUS_COMPLETED, final_answer="42"),
            update_mask=mask("status", "final_answer"),
            events=[completed("42")],
        )
    )
    assert (end.first_seq, end.last_seq) == (3, 3)
    assert end.session.status == S.SESSION_STATUS_COMPLETED
    events = await watch_all(api, session)  # ends by itself after the terminal event
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.content_delta.text for e in events[:2]] == ["ans", "wer"]
    assert events[2].session_completed.final_answer == "42"
    assert all(e.session == session and e.time.seconds for e in events)
    got = await read_session(api, session)
    assert got.final_answer == "42"
    assert got.end_time.seconds


async def test_events_only_and_messages_only_steps(api: Api) -> None:
    session = await new_session(api)
    events_only = await api.CommitStep(
        memory_pb2.CommitStepRequest(session=session, events=[delta("a"), delta("b")])
    )
    assert (events_only.first_seq, events_only.last_seq) == (1, 2)
    assert not events_only.messages
    assert not events_only.executions
    assert not events_only.HasField("session")

    messages_only = await api.CommitStep(
        memory_pb2.CommitStepRequest(session=session, messages=[text("hello")])
    )
    assert (messages_only.first_seq, messages_only.last_seq) == (0, 0)
    assert [m.message.content for m in messages_only.messages] == ["hello"]
    assert not messages_only.HasField("session")
    assert await stored_messages(api, session) == list(messages_only.messages)
    got = await read_session(api, session)
    assert got.last_event_seq == 2
    assert got.status == S.SESSION_STATUS_PENDING
    after = await api.CommitStep(memory_pb2.CommitStepRequest(session=session, events=[delta("c")]))
    assert (after.first_seq, after.last_seq) == (3, 3)


async def test_a_watcher_wakes_on_a_steps_events(database_url: str, tenant: str) -> None:
    # A 30 s poll: only the notification sent after the step's commit can wake the watcher.
    running = await start_memory(memory_settings(database_url, watch_poll_seconds="30"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            api = Api(channel, tenant)
            session = await new_session(api)
            call = api.WatchEvents(memory_pb2.WatchEventsRequest(session=session), timeout=30)
            waiter = asyncio.create_task(call.read())
            await asyncio.sleep(0.2)  # the watcher found nothing and waits
            sent = time.perf_counter()
            await api.CommitStep(
                memory_pb2.CommitStepRequest(
                    session=session, messages=[text("hi")], events=[delta("x"), delta("y")]
                )
            )
            response = await asyncio.wait_for(waiter, 5)
            assert time.perf_counter() - sent < 1.0
            assert [e.seq for e in response.events] == [1, 2]
            call.cancel()
    finally:
        await running.stop()


async def test_a_bad_status_transition_writes_nothing(api: Api) -> None:
    session = await new_session(api)
    error = await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session,
                executions=[execution(key="lost-1")],
                messages=[text("fine")],
                update=S.Session(status=S.SESSION_STATUS_COMPLETED, rounds_completed=3),
                update_mask=mask("status", "rounds_completed"),  # PENDING cannot complete
                events=[delta("never")],
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "INVALID_STATUS_TRANSITION"
    await assert_untouched(api, session, last_event_seq=0, status=S.SESSION_STATUS_PENDING)
    by_key = await api.ListExecutions(memory_pb2.ListExecutionsRequest(idempotency_key="lost-1"))
    assert not by_key.executions
    first = await api.AppendEvents(
        memory_pb2.AppendEventsRequest(session=session, events=[delta("first")])
    )
    assert first.first_seq == 1  # the failed step consumed no seq


async def test_events_on_an_ended_session_roll_back_messages_and_executions(api: Api) -> None:
    session = await new_session(api)
    await api.AppendEvents(memory_pb2.AppendEventsRequest(session=session, events=[completed()]))
    error = await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session,
                executions=[execution()],
                messages=[text("late")],
                update=S.Session(rounds_completed=4),
                update_mask=mask("rounds_completed"),
                events=[delta("late")],
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "SESSION_ENDED"
    await assert_untouched(api, session, last_event_seq=1, status=S.SESSION_STATUS_PENDING)


async def test_a_message_clash_rolls_back_the_executions_and_events(api: Api) -> None:
    session = await new_session(api)
    await api.AppendMessages(
        memory_pb2.AppendMessagesRequest(
            parent=session, messages=[text("taken", name=f"{session}/messages/m-1")]
        )
    )
    await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session,
                executions=[execution()],
                messages=[text("again", name=f"{session}/messages/m-1")],
                events=[delta("x")],
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert [m.message.content for m in await stored_messages(api, session)] == ["taken"]
    assert await stored_executions(api, session) == []
    assert (await read_session(api, session)).last_event_seq == 0


async def test_only_the_unexpired_lease_holder_can_commit(api: Api) -> None:
    session = await new_session(api)
    await api.AcquireLease(
        memory_pb2.AcquireLeaseRequest(session=session, owner="replica-a", ttl=ttl(30))
    )
    held = await api.CommitStep(
        memory_pb2.CommitStepRequest(
            session=session, lease_owner="replica-a", messages=[text("mine")], events=[delta("a")]
        )
    )
    assert held.last_seq == 1

    error = await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session,
                lease_owner="replica-b",
                executions=[execution()],
                messages=[text("not mine")],
                events=[delta("b")],
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "LEASE_LOST"
    assert dict(error.metadata) == {"session": session, "holder": "replica-a"}
    assert [m.message.content for m in await stored_messages(api, session)] == ["mine"]
    assert await stored_executions(api, session) == []
    assert (await read_session(api, session)).last_event_seq == 1

    # Without lease_owner the step is not fenced.
    unfenced = await api.CommitStep(
        memory_pb2.CommitStepRequest(session=session, events=[delta("c")])
    )
    assert unfenced.last_seq == 2


async def test_an_expired_or_missing_lease_is_lost(api: Api) -> None:
    session = await new_session(api)
    never = await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session, lease_owner="replica-a", events=[delta("x")]
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert never.reason == "LEASE_LOST"
    assert never.metadata["holder"] == ""

    await api.AcquireLease(
        memory_pb2.AcquireLeaseRequest(session=session, owner="replica-a", ttl=ttl(0.3))
    )
    await asyncio.sleep(0.45)  # the lease expires; nobody took it over yet
    expired = await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session, lease_owner="replica-a", messages=[text("stale")]
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert expired.reason == "LEASE_LOST"
    assert dict(expired.metadata) == {"session": session, "holder": ""}
    assert await stored_messages(api, session) == []
    assert (await read_session(api, session)).last_event_seq == 0

    await api.AcquireLease(
        memory_pb2.AcquireLeaseRequest(session=session, owner="replica-b", ttl=ttl(30))
    )
    taken = await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session, lease_owner="replica-a", events=[delta("x")]
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert taken.metadata["holder"] == "replica-b"
    assert (
        await api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session, lease_owner="replica-b", events=[delta("y")]
            )
        )
    ).last_seq == 1


async def test_a_repeated_request_id_writes_once(api: Api) -> None:
    session = await new_session(api)
    request = memory_pb2.CommitStepRequest(
        session=session,
        executions=[execution()],
        messages=[text("once")],
        update=S.Session(status=S.SESSION_STATUS_RUNNING),
        update_mask=mask("status"),
        events=[delta("a"), delta("b")],
        request_id="step-1",
    )
    first = await api.CommitStep(request)
    again = await api.CommitStep(request)
    assert again == first
    assert (first.first_seq, first.last_seq) == (1, 2)
    assert len(await stored_messages(api, session)) == 1
    assert len(await stored_executions(api, session)) == 1
    assert (await read_session(api, session)).last_event_seq == 2

    changed = memory_pb2.CommitStepRequest()
    changed.CopyFrom(request)
    changed.messages[0].message.content = "different"
    error = await rpc_error(api.CommitStep(changed), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.reason == "REQUEST_ID_REUSED"
    assert len(await stored_messages(api, session)) == 1
    assert (await read_session(api, session)).last_event_seq == 2


async def test_invalid_steps_name_the_field_at_fault(api: Api) -> None:
    session = await new_session(api)
    other = "sessions/other"
    cases: list[tuple[memory_pb2.CommitStepRequest, str]] = [
        (memory_pb2.CommitStepRequest(session="nope", events=[delta("x")]), "session"),
        (
            memory_pb2.CommitStepRequest(session=session, events=[delta("x"), E.SessionEvent()]),
            "events[1]",
        ),
        (
            memory_pb2.CommitStepRequest(
                session=session, events=[delta("x")], messages=[text("x", role=0)]
            ),
            "messages[0].message.role",
        ),
        (
            memory_pb2.CommitStepRequest(
                session=session, update=S.Session(), update_mask=mask("status")
            ),
            "update.status",
        ),
        (
            memory_pb2.CommitStepRequest(
                session=session, update=S.Session(goal="new"), update_mask=mask("goal")
            ),
            "update_mask",
        ),
        (
            memory_pb2.CommitStepRequest(
                session=session,
                update=S.Session(name=other, rounds_completed=1),
                update_mask=mask("rounds_completed"),
            ),
            "update.name",
        ),
        (
            memory_pb2.CommitStepRequest(
                session=session, executions=[execution(), execution(session=other)]
            ),
            "executions[1].session",
        ),
        (
            memory_pb2.CommitStepRequest(
                session=session, executions=[execution(), execution(provider="")]
            ),
            "executions[1].provider",
        ),
        (
            memory_pb2.CommitStepRequest(
                session=session, lease_owner="x" * 200, events=[delta("x")]
            ),
            "lease_owner",
        ),
    ]
    for request, field in cases:
        error = await rpc_error(api.CommitStep(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert field in violation_fields(error), (field, violation_fields(error))

    empty = await rpc_error(
        api.CommitStep(
            # An update without a mask changes nothing, so this step is empty too.
            memory_pb2.CommitStepRequest(session=session, update=S.Session(rounds_completed=2))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(empty) == {
        "executions",
        "messages",
        "update_mask",
        "approvals",
        "events",
    }
    await assert_untouched(api, session, last_event_seq=0, status=S.SESSION_STATUS_PENDING)


async def test_another_tenants_session_is_not_found(api: Api) -> None:
    session = await new_session(api)
    stranger = api.as_tenant(f"{api.tenant}-other")
    error = await rpc_error(
        stranger.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session,
                executions=[execution()],
                messages=[text("intrusion")],
                events=[delta("x")],
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error.reason == "SESSION_NOT_FOUND"
    await assert_untouched(api, session, last_event_seq=0, status=S.SESSION_STATUS_PENDING)
    assert not (await stranger.ListExecutions(memory_pb2.ListExecutionsRequest())).executions
    await rpc_error(
        api.CommitStep(
            memory_pb2.CommitStepRequest(session="sessions/missing", events=[delta("x")])
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_recorded_idempotency_key_keeps_its_first_record(api: Api) -> None:
    session = await new_session(api)
    first = (
        await api.RecordExecution(
            memory_pb2.RecordExecutionRequest(execution=execution(session=session, key="call-1"))
        )
    ).execution
    step = await api.CommitStep(
        memory_pb2.CommitStepRequest(
            session=session,
            executions=[execution(key="call-1", prompt=999), execution(key="call-2", prompt=7)],
            messages=[text("retried turn")],
        )
    )
    assert step.executions[0] == first
    assert step.executions[1].usage.prompt_tokens == 7
    by_key = await api.ListExecutions(memory_pb2.ListExecutionsRequest(idempotency_key="call-1"))
    assert list(by_key.executions) == [first]
    assert [e.usage.prompt_tokens for e in await stored_executions(api, session)] == [10, 7]


async def test_concurrent_steps_of_one_session_all_commit_in_seq_order(api: Api) -> None:
    session = await new_session(api)
    await api.CommitStep(
        memory_pb2.CommitStepRequest(
            session=session,
            update=S.Session(status=S.SESSION_STATUS_RUNNING),
            update_mask=mask("status"),
        )
    )
    steps = 12

    async def step(index: int) -> memory_pb2.CommitStepResponse:
        response: memory_pb2.CommitStepResponse = await api.CommitStep(
            memory_pb2.CommitStepRequest(
                session=session,
                executions=[execution()],
                messages=[text(f"turn {index}")],
                update=S.Session(rounds_completed=index),
                update_mask=mask("rounds_completed"),
                events=[delta(f"{index}a"), delta(f"{index}b")],
            )
        )
        return response

    results = await asyncio.gather(*(step(i) for i in range(steps)))
    ranges = sorted((r.first_seq, r.last_seq) for r in results)
    assert ranges == [(1 + 2 * i, 2 + 2 * i) for i in range(steps)]
    assert len(await stored_messages(api, session)) == steps
    assert len(await stored_executions(api, session)) == steps
    assert (await read_session(api, session)).last_event_seq == 2 * steps
