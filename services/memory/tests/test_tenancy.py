"""Tenancy: another tenant's session, agent, memory, events, tasks, leases... answer NOT_FOUND
and leak nothing, for every resource type; listings never show another tenant's rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from agentmesh.common.v1 import (
    agents_pb2,
    events_pb2,
    memory_entries_pb2,
    messages_pb2,
    sessions_pb2,
    user_settings_pb2,
)
from agentmesh.memory.v1 import memory_pb2 as pb
from agentmesh_memory.testing import Api, rpc_error

S = "sessions/owned"
MEMORY = "agents/owner/users/u/memories/secret"


@pytest.fixture
async def owned(api: Api) -> Api:
    """The owner's resources; returns a client of *another* tenant."""
    await api.CreateAgent(
        pb.CreateAgentRequest(
            agent_id="owner", agent=agents_pb2.AgentDefinition(type=agents_pb2.AGENT_TYPE_CRITIC)
        )
    )
    await api.CreateSession(
        pb.CreateSessionRequest(session=sessions_pb2.Session(goal="private"), session_id="owned")
    )
    await api.AppendMessages(
        pb.AppendMessagesRequest(
            parent=S,
            messages=[
                pb.StoredMessage(
                    message=messages_pb2.Message(role=messages_pb2.ROLE_USER, content="hi")
                )
            ],
        )
    )
    await api.BatchCreateTasks(
        pb.BatchCreateTasksRequest(parent=S, tasks=[sessions_pb2.Task(task_id="t1")])
    )
    await api.AppendEvents(
        pb.AppendEventsRequest(
            session=S,
            events=[events_pb2.SessionEvent(content_delta=events_pb2.ContentDelta(text="x"))],
        )
    )
    entry = memory_entries_pb2.MemoryEntry(name=MEMORY, type=agents_pb2.MEMORY_TYPE_LONG_TERM)
    entry.value.string_value = "v"
    await api.PutMemory(pb.PutMemoryRequest(entry=entry))
    await api.RecordExecution(
        pb.RecordExecutionRequest(
            execution=pb.Execution(
                session=S,
                provider="openai",
                outcome=pb.EXECUTION_OUTCOME_SUCCEEDED,
                idempotency_key="k",
            )
        )
    )
    await api.UpdateUserSettings(
        pb.UpdateUserSettingsRequest(
            settings=user_settings_pb2.UserSettings(name="users/u/settings", default_route="r")
        )
    )
    return api.as_tenant(api.tenant + "-intruder")


async def watch(api: Api) -> None:
    async for _ in api.WatchEvents(pb.WatchEventsRequest(session=S), timeout=10):
        pass


CALLS: dict[str, Callable[[Api], Awaitable[Any]]] = {
    "GetAgent": lambda a: a.GetAgent(pb.GetAgentRequest(name="agents/owner")),
    "UpdateAgent": lambda a: a.UpdateAgent(
        pb.UpdateAgentRequest(agent=agents_pb2.AgentDefinition(name="agents/owner", type=1))
    ),
    "DeleteAgent": lambda a: a.DeleteAgent(pb.DeleteAgentRequest(name="agents/owner")),
    "GetSession": lambda a: a.GetSession(pb.GetSessionRequest(name=S)),
    "UpdateSession": lambda a: a.UpdateSession(
        pb.UpdateSessionRequest(
            session=sessions_pb2.Session(name=S, status=sessions_pb2.SESSION_STATUS_CANCELLED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        )
    ),
    "CreateSession(parent)": lambda a: a.CreateSession(
        pb.CreateSessionRequest(session=sessions_pb2.Session(goal="g", parent=S))
    ),
    "AppendMessages": lambda a: a.AppendMessages(
        pb.AppendMessagesRequest(
            parent=S,
            messages=[pb.StoredMessage(message=messages_pb2.Message(role=messages_pb2.ROLE_USER))],
        )
    ),
    "ListMessages": lambda a: a.ListMessages(pb.ListMessagesRequest(parent=S)),
    "BatchCreateTasks": lambda a: a.BatchCreateTasks(
        pb.BatchCreateTasksRequest(parent=S, tasks=[sessions_pb2.Task(task_id="t2")])
    ),
    "UpdateTask": lambda a: a.UpdateTask(
        pb.UpdateTaskRequest(
            task=sessions_pb2.Task(name=f"{S}/tasks/t1", output="o"),
            update_mask=field_mask_pb2.FieldMask(paths=["output"]),
        )
    ),
    "ListTasks": lambda a: a.ListTasks(pb.ListTasksRequest(parent=S)),
    "AppendEvents": lambda a: a.AppendEvents(
        pb.AppendEventsRequest(
            session=S, events=[events_pb2.SessionEvent(content_delta=events_pb2.ContentDelta())]
        )
    ),
    "WatchEvents": watch,
    "RecordExecution": lambda a: a.RecordExecution(
        pb.RecordExecutionRequest(
            execution=pb.Execution(session=S, provider="p", outcome=pb.EXECUTION_OUTCOME_SUCCEEDED)
        )
    ),
    "ListExecutions": lambda a: a.ListExecutions(pb.ListExecutionsRequest(session=S)),
    "GetMemory": lambda a: a.GetMemory(pb.GetMemoryRequest(name=MEMORY)),
    "DeleteMemory": lambda a: a.DeleteMemory(pb.DeleteMemoryRequest(name=MEMORY)),
    "AcquireLease": lambda a: a.AcquireLease(pb.AcquireLeaseRequest(session=S, owner="thief")),
    "RenewLease": lambda a: a.RenewLease(pb.RenewLeaseRequest(session=S, owner="thief")),
    "ReleaseLease": lambda a: a.ReleaseLease(pb.ReleaseLeaseRequest(session=S, owner="thief")),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_another_tenant_gets_not_found(owned: Api, call: str) -> None:
    error = await rpc_error(CALLS[call](owned), grpc.StatusCode.NOT_FOUND)
    # The answer is the same as for a resource that never existed: no hint of the owner.
    assert owned.tenant.removesuffix("-intruder") not in error.message


async def test_listings_and_rollups_show_nothing_of_another_tenant(owned: Api) -> None:
    assert not (await owned.ListAgents(pb.ListAgentsRequest())).agents
    assert not (await owned.ListSessions(pb.ListSessionsRequest())).sessions
    for parent in ("agents/owner/users/u", "agents/owner/users/-"):
        # Memory belongs to an agent, which the intruder does not have.
        await rpc_error(
            owned.ListMemories(pb.ListMemoriesRequest(parent=parent)), grpc.StatusCode.NOT_FOUND
        )
    assert not (
        await owned.ListExecutions(pb.ListExecutionsRequest(idempotency_key="k"))
    ).executions
    assert not (await owned.ListApiKeys(pb.ListApiKeysRequest())).api_keys
    assert not (await owned.GetUsage(pb.GetUsageRequest())).rows
    settings = (
        await owned.GetUserSettings(pb.GetUserSettingsRequest(name="users/u/settings"))
    ).settings
    assert settings.default_route == ""  # the defaults, not the owner's settings
    # The same ids are free for the other tenant, and do not touch the owner's.
    await owned.CreateSession(
        pb.CreateSessionRequest(session=sessions_pb2.Session(goal="mine"), session_id="owned")
    )
    appended = await owned.AppendEvents(
        pb.AppendEventsRequest(
            session=S, events=[events_pb2.SessionEvent(content_delta=events_pb2.ContentDelta())]
        )
    )
    assert appended.first_seq == 1


async def test_another_tenants_api_key_cannot_be_deleted(api: Api) -> None:
    created = await api.CreateApiKey(pb.CreateApiKeyRequest(display_name="k"))
    intruder = api.as_tenant(api.tenant + "-intruder")
    await rpc_error(
        intruder.DeleteApiKey(pb.DeleteApiKeyRequest(name=created.api_key.name)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert (await api.ListApiKeys(pb.ListApiKeysRequest())).api_keys
