"""Agent memory beyond entries: recall by full-text search, statistics, retention sweeping, and
memory only for agents that exist; addressed messages; agent statistics from the ledger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2, json_format, struct_pb2

from agentmesh.common.v1 import agents_pb2, memory_entries_pb2, messages_pb2, sessions_pb2
from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh.memory.v1 import memory_pb2 as pb
from agentmesh_memory.db import Database
from agentmesh_memory.db.tables import agent_memory
from agentmesh_memory.testing import Api, rpc_error, violation_fields

LONG, SHORT, EPISODIC = (
    agents_pb2.MEMORY_TYPE_LONG_TERM,
    agents_pb2.MEMORY_TYPE_SHORT_TERM,
    agents_pb2.MEMORY_TYPE_EPISODIC,
)


async def agent(api: Api, agent_id: str, *rules: agents_pb2.MemoryRetention) -> None:
    definition = agents_pb2.AgentDefinition(type=agents_pb2.AGENT_TYPE_CUSTOM)
    definition.memory_policy.retention.extend(rules)
    await api.CreateAgent(pb.CreateAgentRequest(agent_id=agent_id, agent=definition))


async def remember(api: Api, name: str, data: object, kind: int = LONG) -> None:
    value = json_format.ParseDict(data, struct_pb2.Value())
    entry = memory_entries_pb2.MemoryEntry(name=name, type=kind, value=value)
    await api.PutMemory(pb.PutMemoryRequest(entry=entry))


async def test_memory_of_an_agent_that_does_not_exist_is_not_found(api: Api) -> None:
    name = "agents/ghost/users/u/memories/k"
    for call in (
        remember(api, name, 1),
        api.GetMemory(pb.GetMemoryRequest(name=name)),
        api.ListMemories(pb.ListMemoriesRequest(parent="agents/ghost/users/u")),
        api.DeleteMemory(pb.DeleteMemoryRequest(name=name)),
        api.SearchMemories(kpb.SearchMemoriesRequest(parent="agents/ghost/users/u", query="x")),
        api.GetMemoryStats(kpb.GetMemoryStatsRequest(parent="agents/ghost/users/-")),
    ):
        error = await rpc_error(call, grpc.StatusCode.NOT_FOUND)
        assert error.reason == "AGENT_NOT_FOUND"
    # Session notes are the built-in pseudo-agent's memory: no definition needed.
    await remember(api, "agents/session-notes/users/s1/memories/notes", "shared")
    # Deleting an agent deletes its memory with it.
    await agent(api, "brief")
    await remember(api, "agents/brief/users/u/memories/k", 1)
    await api.DeleteAgent(pb.DeleteAgentRequest(name="agents/brief"))
    await agent(api, "brief")
    listed = await api.ListMemories(pb.ListMemoriesRequest(parent="agents/brief/users/u"))
    assert not listed.entries


async def test_recall_ranks_by_keys_and_values_then_fills_with_recent(api: Api) -> None:
    await agent(api, "chef")
    base = "agents/chef/users/ann/memories"
    await remember(api, f"{base}/favorite_cuisine", "Ann loves spicy Thai curry")
    await remember(api, f"{base}/allergies", {"nuts": True, "note": "peanut allergy"})
    await remember(api, f"{base}/dog_name", "Biscuit", SHORT)
    await remember(api, f"{base}/last_order", "mushroom risotto", EPISODIC)
    await remember(api, "agents/chef/users/bob/memories/favorite_cuisine", "Thai food too")

    found = await api.SearchMemories(
        kpb.SearchMemoriesRequest(
            parent="agents/chef/users/ann", query="What curry should I cook for Ann tonight?"
        )
    )
    assert [e.name.rsplit("/", 1)[-1] for e in found.entries] == ["favorite_cuisine"]
    assert found.matched == 1
    by_key = await api.SearchMemories(
        kpb.SearchMemoriesRequest(parent="agents/chef/users/ann", query="any allergies?")
    )
    assert [e.name.rsplit("/", 1)[-1] for e in by_key.entries] == ["allergies"]
    by_value = await api.SearchMemories(
        kpb.SearchMemoriesRequest(parent="agents/chef/users/ann", query="peanuts")
    )
    assert [e.name.rsplit("/", 1)[-1] for e in by_value.entries] == ["allergies"]

    recalled = await api.SearchMemories(
        kpb.SearchMemoriesRequest(
            parent="agents/chef/users/ann",
            query="thai curry",
            page_size=3,
            fill_with_recent=True,
            record_access=True,
            types=[LONG, EPISODIC],
        )
    )
    names = [e.name.rsplit("/", 1)[-1] for e in recalled.entries]
    assert names[0] == "favorite_cuisine"
    assert recalled.matched == 1
    assert set(names) == {"favorite_cuisine", "allergies", "last_order"}, "types filter"
    got = await api.GetMemory(pb.GetMemoryRequest(name=f"{base}/last_order"))
    assert got.entry.access_count == 2, "recall counted as a read, then this get"
    untouched = await api.GetMemory(pb.GetMemoryRequest(name=f"{base}/dog_name"))
    assert untouched.entry.access_count == 1
    nothing = await api.SearchMemories(
        kpb.SearchMemoriesRequest(
            parent="agents/chef/users/ann", query="the and of", page_size=2, fill_with_recent=True
        )
    )
    assert len(nothing.entries) == 2
    assert nothing.matched == 0
    error = await rpc_error(
        api.SearchMemories(kpb.SearchMemoriesRequest(parent="agents/chef/users/-", query="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"parent"}


async def test_statistics_count_entries_bytes_reads_and_last_access(api: Api) -> None:
    await agent(api, "stats-a")
    await agent(api, "stats-b")
    # Values are JSON as stored; numbers are doubles: {"k":1.0} is 9 bytes.
    await remember(api, "agents/stats-a/users/u1/memories/one", "abc")  # "abc": 5 bytes
    await remember(api, "agents/stats-a/users/u1/memories/two", {"k": 1}, SHORT)  # 9 bytes
    await remember(api, "agents/stats-a/users/u2/memories/one", 12345)  # 12345.0: 7 bytes
    await remember(api, "agents/stats-b/users/u1/memories/x", [1, 2])
    for _ in range(3):
        await api.GetMemory(pb.GetMemoryRequest(name="agents/stats-a/users/u1/memories/one"))

    one_user = await api.GetMemoryStats(kpb.GetMemoryStatsRequest(parent="agents/stats-a/users/u1"))
    (row,) = one_user.stats
    assert (row.agent, row.user, row.entries, row.bytes, row.reads) == (
        "agents/stats-a",
        "u1",
        2,
        14,
        3,
    )
    assert row.HasField("last_access_time")
    assert row.HasField("last_update_time")
    assert {(t.type, t.entries, t.bytes, t.reads) for t in row.by_type} == {
        (LONG, 1, 5, 3),
        (SHORT, 1, 9, 0),
    }
    users = await api.GetMemoryStats(kpb.GetMemoryStatsRequest(parent="agents/stats-a/users/-"))
    assert [(s.user, s.entries) for s in users.stats] == [("u1", 2), ("u2", 1)]
    assert (users.total.entries, users.total.bytes, users.total.reads) == (3, 21, 3)
    everything: list[tuple[str, str]] = []
    token = ""
    while True:
        page = await api.GetMemoryStats(
            kpb.GetMemoryStatsRequest(parent="agents/-/users/-", page_size=2, page_token=token)
        )
        everything += [(s.agent, s.user) for s in page.stats]
        assert page.total.entries == 4
        token = page.next_page_token
        if not token:
            break
    assert everything == [
        ("agents/stats-a", "u1"),
        ("agents/stats-a", "u2"),
        ("agents/stats-b", "u1"),
    ]
    intruder = api.as_tenant(api.tenant + "-x")
    assert not (
        await intruder.GetMemoryStats(kpb.GetMemoryStatsRequest(parent="agents/-/users/-"))
    ).stats


async def test_retention_rules_are_validated_and_enforced_by_the_sweeper(
    api: Api, db: Database
) -> None:
    from agentmesh_memory.db.notifier import LocalNotifier
    from agentmesh_memory.store import Stores

    bad = agents_pb2.AgentDefinition(type=agents_pb2.AGENT_TYPE_CUSTOM)
    bad.memory_policy.retention.add(type=LONG, max_entries=-1)
    bad.memory_policy.retention.add(type=LONG, max_age=duration_pb2.Duration(nanos=5))
    error = await rpc_error(
        api.CreateAgent(pb.CreateAgentRequest(agent_id="bad", agent=bad)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {
        "agent.memory_policy.retention[0].max_entries",
        "agent.memory_policy.retention[1].type",
        "agent.memory_policy.retention[1].max_age",
    }

    await agent(
        api,
        "keeper",
        agents_pb2.MemoryRetention(type=SHORT, max_entries=2),
        agents_pb2.MemoryRetention(type=EPISODIC, max_age=duration_pb2.Duration(seconds=3600)),
    )
    base = "agents/keeper/users"
    for key in ("a", "b", "c", "d"):
        await remember(api, f"{base}/u1/memories/{key}", key, SHORT)
    await remember(api, f"{base}/u2/memories/only", 1, SHORT)
    await api.GetMemory(pb.GetMemoryRequest(name=f"{base}/u1/memories/a"))  # recently used
    await remember(api, f"{base}/u1/memories/old-event", "x", EPISODIC)
    await remember(api, f"{base}/u1/memories/new-event", "y", EPISODIC)
    await remember(api, f"{base}/u1/memories/forever", "z", LONG)
    # The old event was last written two hours ago.
    async with db.write("age") as conn:
        await conn.execute(
            sa.update(agent_memory)
            .where(agent_memory.c.tenant_id == api.tenant, agent_memory.c.key == "old-event")
            .values(update_time=datetime.now(UTC) - timedelta(hours=2))
        )
    stores = Stores.build(db, LocalNotifier())
    deleted = await stores.insights.sweep_retention()
    assert deleted >= 3
    left = {
        e.name.removeprefix(f"{base}/")
        for user in ("u1", "u2")
        for e in (await api.ListMemories(pb.ListMemoriesRequest(parent=f"{base}/{user}"))).entries
    }
    # The two most recently used short-term entries per user stay: "a" (read) and "d".
    assert left == {
        "u1/memories/a",
        "u1/memories/d",
        "u2/memories/only",
        "u1/memories/new-event",
        "u1/memories/forever",
    }
    # Dropping the rules stops the sweeping.
    await api.UpdateAgent(
        pb.UpdateAgentRequest(
            agent=agents_pb2.AgentDefinition(name="agents/keeper"),
            update_mask={"paths": ["memory_policy"]},  # type: ignore[arg-type]
        )
    )
    for key in ("e", "f", "g"):
        await remember(api, f"{base}/u1/memories/{key}", key, SHORT)
    await stores.insights.sweep_retention()
    remaining = await api.ListMemories(pb.ListMemoriesRequest(parent=f"{base}/u1", type=SHORT))
    assert len(remaining.entries) == 5


async def test_addressed_messages_are_listed_for_their_participants_only(api: Api) -> None:
    await api.CreateSession(
        pb.CreateSessionRequest(session=sessions_pb2.Session(goal="talk"), session_id="talk")
    )

    def said(
        text: str, agent: str = "", to: tuple[str, ...] = (), kind: int = 0
    ) -> pb.StoredMessage:
        return pb.StoredMessage(
            message=messages_pb2.Message(role=messages_pb2.ROLE_ASSISTANT, content=text),
            agent=agent,
            recipients=to,
            type=kind,  # type: ignore[arg-type]
        )

    request = messages_pb2.MESSAGE_TYPE_REQUEST
    await api.AppendMessages(
        pb.AppendMessagesRequest(
            parent="sessions/talk",
            messages=[
                said("hello all", "agents/alice"),
                said("bob, check the numbers", "agents/alice", ("agents/bob",), request),
                said(
                    "done",
                    "agents/bob",
                    ("agents/alice", "agents/carol"),
                    messages_pb2.MESSAGE_TYPE_RESPONSE,
                ),
            ],
        )
    )

    async def listing(**fields: object) -> list[str]:
        reply = await api.ListMessages(pb.ListMessagesRequest(parent="sessions/talk", **fields))  # type: ignore[arg-type]
        return [m.message.content for m in reply.messages]

    assert await listing() == ["hello all", "bob, check the numbers", "done"]
    assert await listing(audience=pb.MESSAGE_AUDIENCE_SHARED, newest=10) == ["hello all"]
    addressed = await api.ListMessages(
        pb.ListMessagesRequest(parent="sessions/talk", audience=pb.MESSAGE_AUDIENCE_ADDRESSED)
    )
    assert [(m.agent, list(m.recipients), m.type) for m in addressed.messages] == [
        ("agents/alice", ["agents/bob"], request),
        ("agents/bob", ["agents/alice", "agents/carol"], messages_pb2.MESSAGE_TYPE_RESPONSE),
    ]
    to = pb.MESSAGE_AUDIENCE_ADDRESSED
    assert await listing(audience=to, participant="agents/carol") == ["done"]
    assert await listing(audience=to, participant="agents/bob") == [
        "bob, check the numbers",
        "done",
    ]
    assert await listing(audience=to, participant="agents/dave") == []
    error = await rpc_error(
        api.AppendMessages(
            pb.AppendMessagesRequest(
                parent="sessions/talk", messages=[said("x", "", ("agents/bob",))]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"messages[0].agent"}


async def test_agent_stats_match_the_ledger(api: Api) -> None:
    await agent(api, "worker")
    for session_id in ("s1", "s2"):
        await api.CreateSession(
            pb.CreateSessionRequest(session=sessions_pb2.Session(goal="g"), session_id=session_id)
        )
    calls = [
        ("s1", 0, 100, pb.EXECUTION_OUTCOME_SUCCEEDED, 10),
        ("s1", 1, 300, pb.EXECUTION_OUTCOME_SUCCEEDED, 20),
        ("s1", 0, 200, pb.EXECUTION_OUTCOME_FAILED, 0),
        ("s2", 0, 400, pb.EXECUTION_OUTCOME_SUCCEEDED, 30),
        ("s2", 0, 1000, pb.EXECUTION_OUTCOME_CANCELLED, 5),
    ]
    for index, (session, call_index, millis, outcome, tokens) in enumerate(calls):
        execution = pb.Execution(
            session=f"sessions/{session}",
            agent="agents/worker",
            provider="openai",
            outcome=outcome,
            call_index=call_index,
            idempotency_key=f"k{index}",
        )
        execution.latency.FromMilliseconds(millis)
        execution.usage.prompt_tokens = tokens
        execution.usage.completion_tokens = 1
        execution.usage.total_tokens = tokens + 1
        execution.usage.cost_micros_usd = tokens * 2
        await api.RecordExecution(pb.RecordExecutionRequest(execution=execution))
    other = pb.Execution(agent="agents/else", provider="openai", outcome=1, idempotency_key="o")
    await api.RecordExecution(pb.RecordExecutionRequest(execution=other))

    stats = (await api.GetAgentStats(kpb.GetAgentStatsRequest(agent="agents/worker"))).stats
    ledger = [
        e
        for session in ("s1", "s2")
        for e in (
            await api.ListExecutions(pb.ListExecutionsRequest(session=f"sessions/{session}"))
        ).executions
    ]
    assert len(ledger) == stats.model_calls == 5
    assert stats.sessions == len({e.session for e in ledger}) == 2
    assert stats.turns == sum(e.call_index == 0 for e in ledger) == 4
    assert stats.usage.total_tokens == sum(e.usage.total_tokens for e in ledger)
    assert stats.usage.cost_micros_usd == sum(e.usage.cost_micros_usd for e in ledger)
    assert (stats.errors, stats.cancelled) == (1, 1)
    assert stats.latency_p50.ToMilliseconds() == 300  # nearest rank of 100 200 300 400 1000
    assert stats.latency_p95.ToMilliseconds() == 1000
    assert stats.last_active_time.ToDatetime() == max(e.create_time.ToDatetime() for e in ledger)

    later = datetime.now(UTC) + timedelta(hours=1)
    window = kpb.GetAgentStatsRequest(agent="agents/worker")
    window.start_time.FromDatetime(later)
    empty = (await api.GetAgentStats(window)).stats
    assert (empty.model_calls, empty.turns, empty.latency_p50.ToMilliseconds()) == (0, 0, 0)
    assert not empty.HasField("last_active_time")
    await rpc_error(
        api.GetAgentStats(kpb.GetAgentStatsRequest(agent="agents/nobody")),
        grpc.StatusCode.NOT_FOUND,
    )
    await rpc_error(
        api.as_tenant(api.tenant + "-x").GetAgentStats(
            kpb.GetAgentStatsRequest(agent="agents/worker")
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await asyncio.sleep(0)


@pytest.mark.parametrize("parent", ["agents/-/users/u1", "users/x", "agents/a"])
async def test_bad_stats_parents_name_the_field(api: Api, parent: str) -> None:
    error = await rpc_error(
        api.GetMemoryStats(kpb.GetMemoryStatsRequest(parent=parent)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"parent"}
