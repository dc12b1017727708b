"""The event log: atomic gapless appends under concurrency, replay-then-tail watching, replicas."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from agentmesh.common.v1 import events_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.testing import (
    Api,
    RunningMemory,
    memory_settings,
    rpc_error,
    start_memory,
    violation_fields,
)

E = events_pb2


def delta(text: str) -> E.SessionEvent:
    return E.SessionEvent(content_delta=E.ContentDelta(text=text))


def completed(answer: str = "done") -> E.SessionEvent:
    return E.SessionEvent(session_completed=E.SessionCompleted(final_answer=answer))


async def new_session(api: Api, session_id: str = "") -> str:
    response = await api.CreateSession(
        memory_pb2.CreateSessionRequest(
            session=sessions_pb2.Session(goal="g"), session_id=session_id
        )
    )
    return str(response.session.name)


async def append(
    api: Api, session: str, *events: E.SessionEvent, request_id: str = ""
) -> tuple[int, int]:
    response = await api.AppendEvents(
        memory_pb2.AppendEventsRequest(session=session, events=list(events), request_id=request_id)
    )
    return response.first_seq, response.last_seq


async def watch_all(api: Api, session: str, after_seq: int = 0) -> list[E.SessionEvent]:
    seen: list[E.SessionEvent] = []
    call = api.WatchEvents(
        memory_pb2.WatchEventsRequest(session=session, after_seq=after_seq), timeout=30
    )
    async for response in call:
        seen.extend(response.events)
    return seen


async def test_append_assigns_gapless_seqs_from_one(api: Api) -> None:
    session = await new_session(api, "log")
    assert await append(api, session, delta("a")) == (1, 1)
    assert await append(api, session, delta("b"), delta("c"), delta("d")) == (2, 4)
    assert await append(api, session, completed()) == (5, 5)
    events = await watch_all(api, session)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.content_delta.text for e in events[:4]] == ["a", "b", "c", "d"]
    assert all(e.session == session and e.time.seconds for e in events)
    got = (await api.GetSession(memory_pb2.GetSessionRequest(name=session))).session
    assert got.last_event_seq == 5


async def test_a_bad_batch_writes_nothing(api: Api) -> None:
    session = await new_session(api)
    error = await rpc_error(
        api.AppendEvents(
            memory_pb2.AppendEventsRequest(session=session, events=[delta("ok"), E.SessionEvent()])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "events[1]" in violation_fields(error)
    for events in ([completed(), delta("after")], [completed(), completed()]):
        await rpc_error(
            api.AppendEvents(memory_pb2.AppendEventsRequest(session=session, events=events)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    await rpc_error(
        api.AppendEvents(
            memory_pb2.AppendEventsRequest(
                session=session,
                events=[E.SessionEvent(session="sessions/other", content_delta=E.ContentDelta())],
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await rpc_error(
        api.AppendEvents(memory_pb2.AppendEventsRequest(session=session)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await append(api, session, delta("first")) == (1, 1)


async def test_nothing_can_follow_the_terminal_event(api: Api) -> None:
    session = await new_session(api)
    await append(api, session, delta("x"), completed())
    error = await rpc_error(
        api.AppendEvents(memory_pb2.AppendEventsRequest(session=session, events=[delta("late")])),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.reason == "SESSION_ENDED"
    await rpc_error(
        api.AppendEvents(
            memory_pb2.AppendEventsRequest(session="sessions/missing", events=[delta("x")])
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_repeated_request_id_appends_once(api: Api) -> None:
    session = await new_session(api)
    first = await append(api, session, delta("a"), delta("b"), request_id="batch-1")
    again = await append(api, session, delta("a"), delta("b"), request_id="batch-1")
    assert first == again == (1, 2)
    assert await append(api, session, delta("c")) == (3, 3)


async def test_many_concurrent_appenders_get_disjoint_gapless_ranges(api: Api) -> None:
    session = await new_session(api)
    appenders, batches, size = 16, 8, 3

    async def appender(index: int) -> list[tuple[int, int]]:
        ranges = []
        for batch in range(batches):
            events = [delta(f"{index}:{batch}:{i}") for i in range(size)]
            ranges.append(await append(api, session, *events))
        return ranges

    results = await asyncio.gather(*(appender(i) for i in range(appenders)))
    ranges = sorted(r for rs in results for r in rs)
    total = appenders * batches * size
    expected, cursor = [], 1
    for _ in range(appenders * batches):
        expected.append((cursor, cursor + size - 1))
        cursor += size
    assert ranges == expected
    await append(api, session, completed())
    events = await watch_all(api, session)
    assert [e.seq for e in events] == list(range(1, total + 2))
    # Each batch stayed contiguous and in order.
    by_seq = {e.seq: e.content_delta.text for e in events}
    for first, last in ranges:
        texts = [by_seq[seq] for seq in range(first, last + 1)]
        prefix = texts[0].rsplit(":", 1)[0]
        assert texts == [f"{prefix}:{i}" for i in range(size)]


async def test_watch_replays_then_tails_without_gaps_or_duplicates(api: Api) -> None:
    session = await new_session(api)
    await append(api, session, *(delta(str(i)) for i in range(50)))
    received: list[int] = []
    started = asyncio.Event()

    async def watcher() -> None:
        call = api.WatchEvents(memory_pb2.WatchEventsRequest(session=session), timeout=30)
        async for response in call:
            received.extend(e.seq for e in response.events)
            started.set()

    task = asyncio.create_task(watcher())
    await asyncio.wait_for(started.wait(), 10)
    for batch in range(20):
        await append(
            api, session, *(delta(f"live-{batch}-{i}") for i in range(random.randint(1, 5)))
        )
        if batch % 5 == 0:
            await asyncio.sleep(0.01)
    last = (await append(api, session, completed()))[1]
    await asyncio.wait_for(task, 10)  # the stream ends by itself after the terminal event
    assert received == list(range(1, last + 1))


async def test_watchers_joining_at_random_moments_see_every_event_once(api: Api) -> None:
    session = await new_session(api)
    results: list[tuple[int, list[int]]] = []

    async def late_watcher(delay: float, after_seq: int) -> None:
        await asyncio.sleep(delay)
        seqs: list[int] = []
        call = api.WatchEvents(
            memory_pb2.WatchEventsRequest(session=session, after_seq=after_seq), timeout=30
        )
        async for response in call:
            seqs.extend(e.seq for e in response.events)
        results.append((after_seq, seqs))

    watchers = [
        asyncio.create_task(late_watcher(random.uniform(0, 0.3), random.choice([0, 0, 3])))
        for _ in range(8)
    ]

    async def appender(index: int) -> None:
        for i in range(15):
            await append(api, session, delta(f"{index}-{i}"))
            await asyncio.sleep(random.uniform(0, 0.02))

    await asyncio.gather(*(appender(i) for i in range(4)))
    last = (await append(api, session, completed()))[1]
    await asyncio.wait_for(asyncio.gather(*watchers), 15)
    assert len(results) == 8
    for after_seq, seqs in results:
        assert seqs == list(range(after_seq + 1, last + 1))


async def test_watch_after_the_end_and_from_the_middle(api: Api) -> None:
    session = await new_session(api)
    await append(api, session, delta("a"), delta("b"), delta("c"), completed())
    assert [e.seq for e in await watch_all(api, session, after_seq=2)] == [3, 4]
    assert await watch_all(api, session, after_seq=4) == []
    assert await watch_all(api, session, after_seq=100) == []
    await rpc_error(watch_all(api, "sessions/missing"), grpc.StatusCode.NOT_FOUND)
    await rpc_error(watch_all(api, session, after_seq=-1), grpc.StatusCode.INVALID_ARGUMENT)


async def test_watch_wakes_at_once_without_polling(database_url: str, tenant: str) -> None:
    # A 30 s poll: only the notification can deliver the event within the bound below.
    running = await start_memory(memory_settings(database_url, watch_poll_seconds="30"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            api = Api(channel, tenant)
            session = await new_session(api)
            await append(api, session, delta("first"))
            call = api.WatchEvents(
                memory_pb2.WatchEventsRequest(session=session, after_seq=1), timeout=30
            )
            waiter = asyncio.create_task(call.read())
            await asyncio.sleep(0.2)  # the watcher has caught up and waits
            sent = time.perf_counter()
            await append(api, session, delta("second"))
            response = await asyncio.wait_for(waiter, 5)
            assert time.perf_counter() - sent < 1.0
            assert [e.seq for e in response.events] == [2]
            call.cancel()
    finally:
        await running.stop()


@pytest.fixture
async def two_replicas(postgres_url: str) -> AsyncIterator[tuple[RunningMemory, RunningMemory]]:
    settings = memory_settings(postgres_url, watch_poll_seconds="30")
    first = await start_memory(settings)
    second = await start_memory(settings)
    try:
        yield first, second
    finally:
        await second.stop()
        await first.stop()


async def test_append_on_one_replica_watch_on_another(
    two_replicas: tuple[RunningMemory, RunningMemory], tenant: str
) -> None:
    writer_server, reader_server = two_replicas
    async with (
        grpc.aio.insecure_channel(writer_server.address) as writer_channel,
        grpc.aio.insecure_channel(reader_server.address) as reader_channel,
    ):
        writer, reader = Api(writer_channel, tenant), Api(reader_channel, tenant)
        session = await new_session(writer)
        await append(writer, session, *(delta(str(i)) for i in range(10)))
        received: list[int] = []
        arrival: dict[int, float] = {}
        caught_up = asyncio.Event()

        async def watch() -> None:
            async for response in reader.WatchEvents(
                memory_pb2.WatchEventsRequest(session=session), timeout=30
            ):
                for event in response.events:
                    received.append(event.seq)
                    arrival[event.seq] = time.perf_counter()
                if received and received[-1] >= 10:
                    caught_up.set()

        task = asyncio.create_task(watch())
        await asyncio.wait_for(caught_up.wait(), 10)
        sent: dict[int, float] = {}
        for i in range(20):
            first, _ = await append(writer, session, delta(f"live-{i}"))
            sent[first] = time.perf_counter()
            await asyncio.sleep(0.01)
        last = (await append(writer, session, completed()))[1]
        await asyncio.wait_for(task, 10)
        assert received == list(range(1, last + 1))
        # Delivered by NOTIFY, not by the 30 s poll.
        assert max(arrival[seq] - sent[seq] for seq in sent) < 1.0
