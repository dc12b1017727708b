"""The session writer: order, group commit, flush timing, failures, subscribers, foreign writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from agentmesh.common.v1 import events_pb2, messages_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FailedPrecondition
from agentmesh_orchestrator.events import EventRecorder
from agentmesh_orchestrator.ports import StepStored, StepWrite
from agentmesh_orchestrator.testing import InMemorySessionStore, Reply

from .conftest import TENANT, Harness, make_agent, make_session

SESSION = "sessions/s1"


class GatedStore(InMemorySessionStore):
    """Holds each commit until the test opens the gate, and remembers what each one held."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.steps: list[StepWrite] = []
        self.fail_with: BaseException | None = None

    async def commit_step(
        self, tenant: str, session: str, step: StepWrite, *, lease_owner: str = ""
    ) -> StepStored:
        self.steps.append(step)
        self.entered.set()
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return await super().commit_step(tenant, session, step, lease_owner=lease_owner)


def note(text: str) -> events_pb2.SessionEvent:
    return events_pb2.SessionEvent(user_message=events_pb2.UserMessage(content=text))


def kinds(step: StepWrite) -> list[str]:
    return [str(e.WhichOneof("payload")) for e in step.events]


async def test_what_is_queued_during_a_commit_goes_in_the_next_one_in_order() -> None:
    store = GatedStore()
    recorder = EventRecorder(store, tenant=TENANT, session=SESSION)
    store.gate.clear()
    await recorder.emit(note("a"))
    await store.entered.wait()  # the first commit is in flight, holding only "a"
    await recorder.delta(agent="x", message_id="m", text="b1")
    await recorder.delta(agent="x", message_id="m", text="b2")
    recorder.stage_messages([memory_pb2.StoredMessage(message=messages_pb2.Message(content="c"))])
    await recorder.emit(note("d"))
    store.gate.set()
    await recorder.flush()

    assert [kinds(step) for step in store.steps] == [
        ["user_message"],
        ["content_delta", "user_message"],
    ]
    assert store.steps[1].events[0].content_delta.text == "b1b2"
    assert [m.message.content for m in store.steps[1].messages] == ["c"]
    assert [e.seq for e in store.events[(TENANT, SESSION)]] == [1, 2, 3]
    assert recorder.last_seq == 3


async def test_text_waits_for_the_flush_interval_but_an_event_is_stored_at_once() -> None:
    store = GatedStore()
    recorder = EventRecorder(store, tenant=TENANT, session=SESSION, flush_interval=0.2)
    await recorder.delta(agent="x", message_id="m", text="hello")
    await asyncio.sleep(0.05)
    assert store.steps == [], "text is batched for up to the flush interval"
    await asyncio.sleep(0.3)
    assert [kinds(step) for step in store.steps] == [["content_delta"]]

    await recorder.emit(note("now"))
    await asyncio.sleep(0.01)
    assert [kinds(step) for step in store.steps][-1] == ["user_message"], "not held back"
    await recorder.close()


async def test_a_failed_commit_fails_every_later_call_and_stores_nothing_more() -> None:
    store = GatedStore()
    store.fail_with = FailedPrecondition("leased by another owner", reason="LEASE_LOST")
    recorder = EventRecorder(store, tenant=TENANT, session=SESSION, lease_owner="me")
    await recorder.emit(note("a"))
    with pytest.raises(FailedPrecondition):
        await recorder.flush()
    assert recorder.failure is store.fail_with
    with pytest.raises(FailedPrecondition):
        await recorder.emit(note("b"))
    with pytest.raises(FailedPrecondition):
        await recorder.delta(agent="x", message_id="m", text="c")
    assert len(store.steps) == 1
    assert store.events[(TENANT, SESSION)] == []


async def test_subscribers_see_stored_events_with_their_seq_and_learn_of_others_writes() -> None:
    store = InMemorySessionStore()
    recorder = EventRecorder(store, tenant=TENANT, session=SESSION)
    batches = recorder.subscribe()
    await recorder.emit(note("mine 1"))
    await recorder.flush()
    # Another replica appends (a SendMessage it served): seq 2 is not ours.
    await store.append_events(TENANT, SESSION, [note("theirs")])
    await recorder.emit(note("mine 2"))
    await recorder.close()

    seen = [batch async for batch in batches]
    assert [[e.seq for e in b.events] for b in seen] == [[1], [3]]
    assert [b.gap for b in seen] == [False, True]
    assert recorder.foreign_writes


async def test_the_conversation_is_read_at_most_once_per_run(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(lambda _: Reply(text="noted"))
    reads = 0
    recent = harness.store.recent_messages

    async def counting(tenant: str, session: str, newest: int) -> list[memory_pb2.StoredMessage]:
        nonlocal reads
        reads += 1
        return await recent(tenant, session, newest)

    harness.store.recent_messages = counting  # type: ignore[method-assign]
    agents = [make_agent("a"), make_agent("b"), make_agent("c")]
    limits = sessions_pb2.SessionLimits(max_rounds=2)

    fresh = make_session(sessions_pb2.STRATEGY_ROUND_ROBIN, limits=limits)
    await harness.engine.run(harness.engine.open_run(TENANT, fresh, agents))
    assert len(harness.gateway.requests) == 6
    assert reads == 0, "a session that never ran has no conversation to read"
    assert [len(r.messages) for r in harness.gateway.requests] == [2, 3, 4, 5, 6, 7]

    # A session that was sent a message before it ran (SendMessage stores both).
    sent = make_session(sessions_pb2.STRATEGY_ROUND_ROBIN, limits=limits)
    sent.name = "sessions/s2"
    await harness.store.append_messages(
        TENANT,
        sent.name,
        [
            memory_pb2.StoredMessage(
                message=messages_pb2.Message(role=messages_pb2.ROLE_USER, content="bring cake")
            )
        ],
    )
    last = await harness.store.append_events(TENANT, sent.name, [note("bring cake")])
    harness.gateway.requests.clear()
    await harness.engine.run(harness.engine.open_run(TENANT, sent, agents, last_seq=last))
    assert reads == 1, "six turns, one read of the conversation"
    assert all(any(m.content == "bring cake" for m in r.messages) for r in harness.gateway.requests)
    assert [len(r.messages) for r in harness.gateway.requests] == [3, 4, 5, 6, 7, 8]


async def test_a_message_another_replica_stored_reaches_the_next_turn(
    harness_factory: Callable[..., Harness],
) -> None:
    harness: Harness

    async def foreign_user_message() -> None:
        # What SendMessage does on a replica that is not running the session.
        store = harness.store
        await store.append_messages(
            TENANT,
            SESSION,
            [
                memory_pb2.StoredMessage(
                    message=messages_pb2.Message(
                        role=messages_pb2.ROLE_USER, content="also bring lemonade"
                    )
                )
            ],
        )
        await store.append_events(TENANT, SESSION, [note("also bring lemonade")])

    sent: list[asyncio.Task[None]] = []

    def script(request: object) -> Reply:
        if not sent:
            sent.append(asyncio.get_running_loop().create_task(foreign_user_message()))
        # A model slower than the flush interval, as real ones are: the writer commits (and
        # learns of the foreign write) while a turn is still running.
        return Reply(text="ok", delay_seconds=0.08)

    harness = harness_factory(script)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=3)
    )
    await harness.engine.run(harness.engine.open_run(TENANT, session, [make_agent("a")]))
    seen_later = [
        any(m.content == "also bring lemonade" for m in r.messages)
        for r in harness.gateway.requests
    ]
    assert seen_later[0] is False
    assert seen_later[-1] is True, "the foreign message never reached the agent"
    seqs = [e.seq for e in harness.events()]
    assert seqs == list(range(1, len(seqs) + 1))
