"""A replica dies mid-session and another resumes it from the store (issue 16, findings 1, 3).

The first owner is stopped exactly where the fault run's kills landed (in the second turn of
a round; after a call's deltas were stored but before its end was), the way a replica that
lost its lease stops: silently, dropping what was not stored. Then a second run of the
engine resumes the session from what the store holds, as the new owner of the lease does.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable

from agentmesh.common.v1 import events_pb2, generation_pb2, sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh_orchestrator.engine import SessionEngine
from agentmesh_orchestrator.runtime import Runtime
from agentmesh_orchestrator.testing import Reply, ScriptedGateway, system_prompt

from .conftest import TENANT, Harness, make_agent, make_session

TERMINAL = {"session_completed", "session_failed", "session_cancelled"}
NAME = "sessions/s1"


class HeldGateway:
    """The scripted gateway, counting calls per idempotency key, able to hold one call
    before it answers or after its `finished` (a stream whose end is slow to come)."""

    def __init__(self, inner: ScriptedGateway) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.hold_before: set[str] = set()
        self.hold_after_finished: set[str] = set()
        self.reached: dict[str, asyncio.Event] = {}

    def point(self, key: str) -> asyncio.Event:
        return self.reached.setdefault(key, asyncio.Event())

    async def generate(
        self, tenant: str, request: inference_pb2.GenerateRequest
    ) -> AsyncIterator[generation_pb2.GenerateEvent]:
        key = request.idempotency_key
        self.calls[key] += 1
        if key in self.hold_before:
            self.point(key).set()
            await asyncio.Future()  # until the replica dies
        async for event in self.inner.generate(tenant, request):
            yield event
        if key in self.hold_after_finished:
            # Reached only when the caller asks for more after `finished`.
            self.point(key).set()
            await asyncio.Future()


def speaker_script(request: inference_pb2.GenerateRequest) -> Reply:
    speaker = system_prompt(request).split()[0]
    return Reply(text=f"{speaker} says a few words", chunks=3)


async def until(predicate: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in time: {what}")
        await asyncio.sleep(0.005)


async def kill(run: Runtime, task: asyncio.Task[sessions_pb2.Session]) -> None:
    """Stop the owner as a replica that lost the lease stops: no more writes, no end."""
    run.abandoned = True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await run.recorder.abandon()


def release(gateway: HeldGateway) -> None:
    """The new owner's calls are not held."""
    gateway.hold_before.clear()
    gateway.hold_after_finished.clear()


async def resume(harness: Harness, engine: SessionEngine, agents: list) -> sessions_pb2.Session:  # type: ignore[type-arg]
    stored = sessions_pb2.Session()
    stored.CopyFrom(harness.store.sessions[(TENANT, NAME)])
    assert stored.status == sessions_pb2.SESSION_STATUS_RUNNING
    run = engine.open_run(TENANT, stored, agents, last_seq=len(harness.events()))
    return await asyncio.wait_for(engine.run(run, resumed=True), 10)


def assert_clean_log(events: list[events_pb2.SessionEvent]) -> None:
    """Gapless seq, each completion once and after its start, one terminal event, last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "no gap, no duplicate"
    started: set[str] = set()
    completed: list[str] = []
    for event in events:
        if event.HasField("message_started"):
            started.add(event.message_id)
        elif event.HasField("message_completed"):
            assert event.message_id in started, f"{event.message_id} completed, never started"
            completed.append(event.message_id)
    assert len(completed) == len(set(completed)), "a message completed twice"
    kinds = [str(e.WhichOneof("payload")) for e in events]
    assert sum(kind in TERMINAL for kind in kinds) == 1
    assert kinds[-1] in TERMINAL


def ledger_tokens(harness: Harness) -> int:
    """Tokens of every call the usage ledger holds (each call once)."""
    return sum(e.usage.total_tokens for e in harness.store.executions.values())


def completions(events: list[events_pb2.SessionEvent]) -> list[tuple[str, str]]:
    return [
        (e.agent, e.message_completed.message.content)
        for e in events
        if e.HasField("message_completed")
    ]


async def test_a_turn_completed_before_the_takeover_is_not_completed_again() -> None:
    """Finding 1: killed in the second turn of round 2, the new owner reuses the first turn's
    answer from the ledger without emitting its `message_completed` a second time."""
    harness = Harness(speaker_script)
    gateway = HeldGateway(harness.gateway)
    engine = SessionEngine(store=harness.store, gateway=gateway, tools={})
    agents = [make_agent("a", system="a"), make_agent("b", system="b")]
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=2)
    )
    gateway.hold_before.add(f"{NAME}/r2-b/0")
    first = engine.open_run(TENANT, session, agents)
    task = asyncio.create_task(engine.run(first))
    await asyncio.wait_for(gateway.point(f"{NAME}/r2-b/0").wait(), 10)
    await first.recorder.flush()  # round 2's first turn is stored, with its ledger row
    await kill(first, task)
    release(gateway)
    assert completions(harness.events())[-1] == ("agents/a", "a says a few words")

    final = await resume(harness, engine, agents)

    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    events = harness.events()
    assert_clean_log(events)
    assert [agent for agent, _ in completions(events)] == [
        "agents/a",
        "agents/b",
        "agents/a",
        "agents/b",
    ], "each turn of the two rounds completed exactly once"
    assert gateway.calls == {
        f"{NAME}/r1-a/0": 1,
        f"{NAME}/r1-b/0": 1,
        f"{NAME}/r2-a/0": 1,
        f"{NAME}/r2-b/0": 2,  # the call the kill cut, made again by the new owner
    }
    conversation = harness.store.messages[(TENANT, NAME)]
    assert [m.agent for m in conversation] == ["agents/a", "agents/b"] * 2


async def test_a_finished_call_is_not_bought_again_when_its_stream_end_never_came() -> None:
    """Finding 3: the call finished and all its deltas were stored, but the stream's end was
    slow and the owner died: the answer must be in the ledger already, so the new owner
    reuses it instead of buying it again."""
    harness = Harness(speaker_script)
    gateway = HeldGateway(harness.gateway)
    engine = SessionEngine(store=harness.store, gateway=gateway, tools={})
    agents = [make_agent("a", system="a"), make_agent("b", system="b")]
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    key = f"{NAME}/r1-a/0"
    gateway.hold_after_finished.add(key)
    gateway.hold_before.add(f"{NAME}/r1-b/0")
    first = engine.open_run(TENANT, session, agents)
    task = asyncio.create_task(engine.run(first))
    await until(
        lambda: (TENANT, key) in harness.store.executions or gateway.point(key).is_set(),
        "the call finished",
    )
    await first.recorder.flush()  # every delta of the call is stored
    streamed = "".join(e.content_delta.text for e in harness.events() if e.agent == "agents/a")
    assert streamed == "a says a few words"
    await kill(first, task)
    release(gateway)

    final = await resume(harness, engine, agents)

    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED
    assert gateway.calls[key] == 1, "a finished call must never be bought again"
    events = harness.events()
    assert_clean_log(events)
    assert completions(events) == [
        ("agents/a", "a says a few words"),
        ("agents/b", "b says a few words"),
    ]


async def test_killed_anywhere_and_resumed_every_message_completes_once() -> None:
    """Kills at 30 seeded random moments of a three-round session (in a turn, between turns,
    while a commit is queued): whatever the new owner resumes from, the log stays clean."""
    clean = 0
    for seed in range(30):
        rng = random.Random(seed)
        harness = Harness(lambda r: Reply(text=speaker_script(r).text, delay_seconds=0.02))
        agents = [make_agent("a", system="a"), make_agent("b", system="b")]
        session = make_session(
            sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=3)
        )
        first = harness.engine.open_run(TENANT, session, agents)
        task = asyncio.create_task(harness.engine.run(first))
        await asyncio.sleep(rng.uniform(0.0, 0.15))  # the moment of the kill, not a wait
        if task.done() or (TENANT, NAME) not in harness.store.sessions:
            await asyncio.gather(task, return_exceptions=True)
            continue
        await kill(first, task)
        if harness.store.sessions[(TENANT, NAME)].status != sessions_pb2.SESSION_STATUS_RUNNING:
            continue  # the kill came after the session's end was stored: nothing to resume
        final = await resume(harness, harness.engine, agents)
        assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED, seed
        events = harness.events()
        assert_clean_log(events)
        assert len(completions(events)) == 6, f"seed {seed}: every turn completed once"
        assert final.usage.total_tokens == ledger_tokens(harness), f"seed {seed}: billed once"
        clean += 1
    assert clean >= 15, "most kills landed mid-session"


async def test_a_resumed_planner_session_bills_each_call_once() -> None:
    """The session's stored usage counts exactly the calls in the ledger (it is staged with
    each row), so the new owner does not add the reused calls' tokens a second time."""
    plan = {
        "rationale": "two steps",
        "tasks": [
            {"id": "t1", "description": "one"},
            {"id": "t2", "description": "two", "depends_on": ["t1"]},
        ],
    }

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if "You are a planner" in system_prompt(request):
            return Reply(text=json.dumps(plan))
        return Reply(text="done with it")

    harness = Harness(script)
    gateway = HeldGateway(harness.gateway)
    engine = SessionEngine(store=harness.store, gateway=gateway, tools={})
    held = f"{NAME}/task-t2-a1/0"
    gateway.hold_before.add(held)
    first = engine.open_run(TENANT, make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR), [])
    task = asyncio.create_task(engine.run(first))
    await asyncio.wait_for(gateway.point(held).wait(), 10)
    await first.recorder.flush()  # the plan and task t1 are stored, with their rows
    await kill(first, task)
    release(gateway)

    final = await resume(harness, engine, [])

    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED, final.error
    assert gateway.calls[f"{NAME}/plan-r1-a1/0"] == 1
    assert gateway.calls[f"{NAME}/task-t1-a1/0"] == 1
    billed = ledger_tokens(harness)
    assert final.usage.total_tokens == billed, "each call billed once"
    assert harness.events()[-1].session_completed.usage.total_tokens == billed
