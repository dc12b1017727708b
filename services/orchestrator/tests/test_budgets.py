"""Token budgets are charged per model call, so no budget is exceeded (issue 16, finding 9).

A session's `max_total_tokens` caps each call's max_tokens to what is left (and starts no call
when too little is left); the tenant's tokens per minute are reserved per call, so one long
session is throttled to the tenant's rate instead of being checked only when its RPC starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from agentmesh.common.v1 import events_pb2, generation_pb2, sessions_pb2
from agentmesh.inference.v1 import inference_pb2
from agentmesh_orchestrator.testing import Reply

from .api_mesh import agent, start_mesh
from .conftest import TENANT, Harness, make_agent, make_session


def chatty(_: inference_pb2.GenerateRequest) -> Reply:
    # Far longer than any budget here: only max_tokens (honoured as a provider does) stops it.
    return Reply(text="x" * 8000, chunks=8)


def completed_usage(events: list[events_pb2.SessionEvent]) -> list[int]:
    return [
        e.message_completed.usage.total_tokens for e in events if e.HasField("message_completed")
    ]


async def test_a_session_never_spends_more_than_its_max_total_tokens(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(chatty)
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN,
        limits=sessions_pb2.SessionLimits(max_rounds=20, max_total_tokens=600),
    )
    agents = [make_agent("a", system="Alpha."), make_agent("b", system="Beta.")]
    for member in agents:
        member.definition.generation.max_tokens = 200
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, agents))

    events = harness.events()
    completed = events[-1].session_completed
    per_call = completed_usage(events)
    assert completed.termination_reason == "token_budget"
    assert len(per_call) >= 2, "the budget bought more than one call"
    # The usage the events report is the usage billed, and it stays within the budget.
    assert sum(per_call) == completed.usage.total_tokens == final.usage.total_tokens
    assert completed.usage.total_tokens <= 600
    print(f"max_total_tokens=600: {per_call} = {completed.usage.total_tokens} tokens")
    # The last call was cut to what the budget left (a provider stops at max_tokens).
    last = [e.message_completed for e in events if e.HasField("message_completed")][-1]
    assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert harness.gateway.requests[-1].config.max_tokens < 200, "capped below the agent's"


async def test_parallel_calls_share_the_session_budget(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(chatty)
    stages = [make_agent(f"s{i}", system=f"Stage {i}.") for i in range(4)]
    session = make_session(
        sessions_pb2.STRATEGY_PIPELINE,
        limits=sessions_pb2.SessionLimits(max_total_tokens=500),
        pipeline=sessions_pb2.PipelineSpec(parallel=True),
    )
    final = await harness.engine.run(harness.engine.open_run(TENANT, session, stages))
    assert sum(completed_usage(harness.events())) == final.usage.total_tokens
    assert final.usage.total_tokens <= 500


async def test_one_long_session_is_throttled_to_the_tenants_tokens_per_minute(
    database_url: str,
) -> None:
    per_minute = 600
    mesh, shutdown = await start_mesh(database_url, chatty, tokens_per_minute=str(per_minute))
    try:
        async with mesh.client() as client:
            talker = agent("alice")
            talker.generation.max_tokens = 60
            session = await client.create_session(
                goal="Talk",
                inline_agents=[talker],
                strategy=sessions_pb2.STRATEGY_ROUND_ROBIN,
                limits=sessions_pb2.SessionLimits(max_rounds=100),
            )
            spent: list[tuple[float, int]] = []  # (seconds since the run started, tokens)
            started = time.monotonic()

            async def follow() -> None:
                async for event in client.run(session.name):
                    if event.HasField("message_completed"):
                        usage = event.message_completed.usage.total_tokens
                        spent.append((time.monotonic() - started, usage))

            follower = asyncio.create_task(follow())
            # Unthrottled, the 100 rounds of ~130 tokens each are done in well under a second.
            done, _ = await asyncio.wait([follower], timeout=4.0)
            window = time.monotonic() - started
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await client.cancel_session(session.name)

        assert not done, "the session was throttled: it could not finish its 100 rounds"
        assert len(spent) >= 2, "it did run"
        total = sum(tokens for _, tokens in spent)
        # A token bucket of `per_minute` refilled continuously: never more than the bucket
        # plus what refilled while the run went on (each call reserved before it started).
        assert total <= per_minute + per_minute / 60 * window, (total, window, spent)
        print(f"{total} tokens in {len(spent)} calls over {window:.1f} s at {per_minute}/min")
    finally:
        await shutdown()
