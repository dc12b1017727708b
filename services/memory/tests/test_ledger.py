"""Executions (one row per provider call, idempotency key) and usage rollups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from agentmesh.common.v1 import generation_pb2, messages_pb2, operations_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.testing import Api, rpc_error, violation_fields

OK, FAILED = memory_pb2.EXECUTION_OUTCOME_SUCCEEDED, memory_pb2.EXECUTION_OUTCOME_FAILED


def execution(
    provider: str = "openai",
    model: str = "gpt-4o",
    *,
    session: str = "",
    agent: str = "",
    prompt: int = 10,
    completion: int = 5,
    cost: int = 100,
    outcome: int = OK,
    key: str = "",
) -> memory_pb2.Execution:
    return memory_pb2.Execution(
        session=session,
        agent=agent,
        provider=provider,
        model=model,
        attempt=1,
        latency=duration_pb2.Duration(seconds=1, nanos=500_000_000),
        time_to_first_token=duration_pb2.Duration(nanos=200_000_000),
        usage=generation_pb2.Usage(
            prompt_tokens=prompt, completion_tokens=completion, cost_micros_usd=cost
        ),
        outcome=outcome,  # type: ignore[arg-type]
        idempotency_key=key,
        response=messages_pb2.Message(role=messages_pb2.ROLE_ASSISTANT, content="answer"),
    )


async def test_record_stores_every_field_and_a_repeated_key_returns_the_first(api: Api) -> None:
    await api.CreateSession(
        memory_pb2.CreateSessionRequest(session=sessions_pb2.Session(goal="g"), session_id="s")
    )
    first = await api.RecordExecution(
        memory_pb2.RecordExecutionRequest(
            execution=execution(session="sessions/s", agent="agents/a", key="call-1")
        )
    )
    assert not first.already_recorded
    stored = first.execution
    assert stored.name.startswith("executions/")
    assert stored.create_time.seconds
    assert stored.latency.ToMilliseconds() == 1500
    assert stored.time_to_first_token.ToMilliseconds() == 200
    assert stored.usage.total_tokens == 15
    assert stored.response.content == "answer"
    second = await api.RecordExecution(
        memory_pb2.RecordExecutionRequest(
            execution=execution(session="sessions/s", prompt=999, key="call-1")
        )
    )
    assert second.already_recorded
    assert second.execution == stored
    by_key = await api.ListExecutions(memory_pb2.ListExecutionsRequest(idempotency_key="call-1"))
    assert list(by_key.executions) == [stored]
    by_session = await api.ListExecutions(memory_pb2.ListExecutionsRequest(session="sessions/s"))
    assert len(by_session.executions) == 1
    await rpc_error(
        api.RecordExecution(
            memory_pb2.RecordExecutionRequest(execution=execution(session="sessions/none"))
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_bad_records_are_refused(api: Api) -> None:
    bad = execution(provider="", outcome=memory_pb2.EXECUTION_OUTCOME_UNSPECIFIED, prompt=-1)
    error = await rpc_error(
        api.RecordExecution(memory_pb2.RecordExecutionRequest(execution=bad)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert {
        "execution.provider",
        "execution.outcome",
        "execution.usage.prompt_tokens",
    } <= violation_fields(error)


async def test_usage_rolls_up_by_every_grouping_and_window(api: Api) -> None:
    for session_id in ("s1", "s2"):
        await api.CreateSession(
            memory_pb2.CreateSessionRequest(
                session=sessions_pb2.Session(goal="g"), session_id=session_id
            )
        )
    rows = [
        execution(
            "openai",
            "gpt-4o",
            session="sessions/s1",
            agent="agents/a",
            prompt=10,
            completion=5,
            cost=100,
        ),
        execution(
            "openai",
            "gpt-4o-mini",
            session="sessions/s1",
            agent="agents/b",
            prompt=20,
            completion=10,
            cost=10,
        ),
        execution(
            "anthropic",
            "claude",
            session="sessions/s2",
            agent="agents/a",
            prompt=30,
            completion=15,
            cost=300,
            outcome=FAILED,
        ),
        execution("local", "tiny", agent="agents/b", prompt=1, completion=1, cost=0),
    ]
    for row in rows:
        await api.RecordExecution(memory_pb2.RecordExecutionRequest(execution=row))

    async def usage(group: int, **filters: object) -> dict[str, tuple[int, int, int, int]]:
        response = await api.GetUsage(memory_pb2.GetUsageRequest(group_by=group, **filters))  # type: ignore[arg-type]
        return {
            r.key: (r.usage.total_tokens, r.usage.cost_micros_usd, r.calls, r.failed_calls)
            for r in response.rows
        }

    G = operations_pb2
    assert await usage(G.USAGE_GROUPING_TENANT) == {api.tenant: (92, 410, 4, 1)}
    assert await usage(G.USAGE_GROUPING_SESSION) == {
        "": (2, 0, 1, 0),
        "sessions/s1": (45, 110, 2, 0),
        "sessions/s2": (45, 300, 1, 1),
    }
    assert await usage(G.USAGE_GROUPING_AGENT) == {
        "agents/a": (60, 400, 2, 1),
        "agents/b": (32, 10, 2, 0),
    }
    assert await usage(G.USAGE_GROUPING_PROVIDER) == {
        "anthropic": (45, 300, 1, 1),
        "local": (2, 0, 1, 0),
        "openai": (45, 110, 2, 0),
    }
    assert await usage(G.USAGE_GROUPING_MODEL, provider="openai") == {
        "openai/gpt-4o": (15, 100, 1, 0),
        "openai/gpt-4o-mini": (30, 10, 1, 0),
    }
    assert await usage(G.USAGE_GROUPING_AGENT, session="sessions/s1", agent="agents/a") == {
        "agents/a": (15, 100, 1, 0)
    }
    total = await api.GetUsage(memory_pb2.GetUsageRequest(group_by=G.USAGE_GROUPING_PROVIDER))
    assert total.total.total_tokens == 92
    assert total.total.cost_micros_usd == 410

    def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
        value = timestamp_pb2.Timestamp()
        value.FromDatetime(moment)
        return value

    now = datetime.now(UTC)
    assert await usage(G.USAGE_GROUPING_TENANT, end_time=stamp(now - timedelta(hours=1))) == {}
    assert await usage(
        G.USAGE_GROUPING_TENANT,
        start_time=stamp(now - timedelta(hours=1)),
        end_time=stamp(now + timedelta(minutes=1)),
    ) == {api.tenant: (92, 410, 4, 1)}
    await rpc_error(
        api.GetUsage(
            memory_pb2.GetUsageRequest(start_time=stamp(now), end_time=stamp(now - timedelta(1)))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_a_batch_of_records_is_written_whole_or_not_at_all(api: Api) -> None:
    reply = await api.BatchRecordExecutions(
        memory_pb2.BatchRecordExecutionsRequest(
            executions=[execution(key="b-1", cost=7), execution("anthropic", "claude", cost=5)]
        )
    )
    assert [e.provider for e in reply.executions] == ["openai", "anthropic"]
    again = await api.BatchRecordExecutions(
        memory_pb2.BatchRecordExecutionsRequest(executions=[execution(key="b-1", cost=999)])
    )
    assert again.executions[0].usage.cost_micros_usd == 7, "a repeated key keeps its first record"
    error = await rpc_error(
        api.BatchRecordExecutions(
            memory_pb2.BatchRecordExecutionsRequest(
                executions=[execution(key="b-2"), execution(provider="")]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"executions[1].provider"}
    listed = await api.ListExecutions(memory_pb2.ListExecutionsRequest(idempotency_key="b-2"))
    assert not listed.executions, "nothing of a refused batch was written"
    usage = await api.GetUsage(memory_pb2.GetUsageRequest())
    assert usage.total.cost_micros_usd == 12
