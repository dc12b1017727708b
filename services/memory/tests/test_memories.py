"""Agent memory (TTL, access tracking, sweeping), user settings and API keys."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2

from agentmesh.common.v1 import agents_pb2, memory_entries_pb2, user_settings_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.db import Database
from agentmesh_memory.db.notifier import LocalNotifier
from agentmesh_memory.store import Stores
from agentmesh_memory.testing import Api, rpc_error, violation_fields

LONG, SHORT = agents_pb2.MEMORY_TYPE_LONG_TERM, agents_pb2.MEMORY_TYPE_SHORT_TERM


def value(data: object) -> struct_pb2.Value:
    result = struct_pb2.Value()
    from google.protobuf import json_format

    json_format.ParseDict(data, result)
    return result


def put(
    name: str, data: object, kind: int = LONG, ttl: float | None = None, **extra: object
) -> memory_pb2.PutMemoryRequest:
    request = memory_pb2.PutMemoryRequest(
        entry=memory_entries_pb2.MemoryEntry(name=name, type=kind, value=value(data)),  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )
    if ttl is not None:
        request.ttl.FromTimedelta(timedelta(seconds=ttl))
    return request


BASE = "agents/helper/users/u1/memories"
AGENTS = ("helper", "scribe", "other")


async def create_agents(api: Api, *agent_ids: str) -> None:
    """Memory belongs to existing agents: create the ones a test writes memory for."""
    for agent_id in agent_ids or AGENTS:
        await api.CreateAgent(
            memory_pb2.CreateAgentRequest(
                agent_id=agent_id,
                agent=agents_pb2.AgentDefinition(type=agents_pb2.AGENT_TYPE_CUSTOM),
            )
        )


@pytest.fixture
async def api(api: Api) -> Api:
    """The conftest's client, with the agents these tests keep memory for."""
    await create_agents(api)
    return api


async def test_put_get_list_delete(api: Api) -> None:
    stored = (await api.PutMemory(put(f"{BASE}/color", {"favorite": "blue", "n": [1, 2]}))).entry
    assert stored.name == f"{BASE}/color"
    assert stored.access_count == 0
    got = (await api.GetMemory(memory_pb2.GetMemoryRequest(name=f"{BASE}/color"))).entry
    assert got.value.struct_value["favorite"] == "blue"
    assert got.access_count == 1
    assert got.access_time.seconds
    again = (await api.GetMemory(memory_pb2.GetMemoryRequest(name=f"{BASE}/color"))).entry
    assert again.access_count == 2
    assert again.access_time.ToDatetime() >= got.access_time.ToDatetime()
    replaced = (await api.PutMemory(put(f"{BASE}/color", "green", SHORT))).entry
    assert replaced.value.string_value == "green"
    assert replaced.type == SHORT
    assert replaced.create_time == stored.create_time
    assert replaced.access_count == 2
    await api.PutMemory(put(f"{BASE}/age", 3))
    await api.PutMemory(put("agents/helper/users/u2/memories/other", 1))
    listed = await api.ListMemories(memory_pb2.ListMemoriesRequest(parent="agents/helper/users/u1"))
    assert [e.name for e in listed.entries] == [f"{BASE}/age", f"{BASE}/color"]
    short = await api.ListMemories(
        memory_pb2.ListMemoriesRequest(parent="agents/helper/users/u1", type=SHORT)
    )
    assert [e.name for e in short.entries] == [f"{BASE}/color"]
    await api.DeleteMemory(memory_pb2.DeleteMemoryRequest(name=f"{BASE}/color"))
    await rpc_error(
        api.GetMemory(memory_pb2.GetMemoryRequest(name=f"{BASE}/color")), grpc.StatusCode.NOT_FOUND
    )
    await rpc_error(
        api.DeleteMemory(memory_pb2.DeleteMemoryRequest(name=f"{BASE}/color")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_an_expired_entry_is_invisible_at_once_and_swept(api: Api, db: Database) -> None:
    await api.PutMemory(put(f"{BASE}/soon", "x", SHORT, ttl=0.3))
    await api.PutMemory(put(f"{BASE}/kept", "y"))
    assert (
        await api.GetMemory(memory_pb2.GetMemoryRequest(name=f"{BASE}/soon"))
    ).entry.expire_time.seconds
    await asyncio.sleep(0.4)
    await rpc_error(
        api.GetMemory(memory_pb2.GetMemoryRequest(name=f"{BASE}/soon")), grpc.StatusCode.NOT_FOUND
    )
    listed = await api.ListMemories(memory_pb2.ListMemoriesRequest(parent="agents/helper/users/u1"))
    assert [e.name for e in listed.entries] == [f"{BASE}/kept"]
    await rpc_error(
        api.DeleteMemory(memory_pb2.DeleteMemoryRequest(name=f"{BASE}/soon")),
        grpc.StatusCode.NOT_FOUND,
    )
    swept, _ = await Stores.build(db, LocalNotifier()).memories.sweep(timedelta(days=7))
    assert swept >= 1
    # Writing the key again starts a fresh entry.
    fresh = (await api.PutMemory(put(f"{BASE}/soon", "new"))).entry
    assert fresh.access_count == 0
    assert not fresh.HasField("expire_time")


async def test_the_user_wildcard_lists_every_user_of_one_agent_in_pages(api: Api) -> None:
    for user, key, kind in [
        ("zoe", "a", LONG),
        ("ann", "b", SHORT),
        ("ann", "a", LONG),
        ("bob", "c", LONG),
        ("bob", "a", SHORT),
    ]:
        await api.PutMemory(put(f"agents/scribe/users/{user}/memories/{key}", key, kind))
    await api.PutMemory(put("agents/other/users/ann/memories/z", 0))
    await api.PutMemory(put("agents/scribe/users/ann/memories/gone", 0, ttl=0.05))
    await asyncio.sleep(0.1)
    names, token = [], ""
    while True:
        page = await api.ListMemories(
            memory_pb2.ListMemoriesRequest(
                parent="agents/scribe/users/-", page_size=2, page_token=token
            )
        )
        assert len(page.entries) <= 2
        names += [e.name.removeprefix("agents/scribe/users/") for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert names == [
        "ann/memories/a",
        "ann/memories/b",
        "bob/memories/a",
        "bob/memories/c",
        "zoe/memories/a",
    ], "by user then key, each once, no other agent's, no expired one"
    short = await api.ListMemories(
        memory_pb2.ListMemoriesRequest(parent="agents/scribe/users/-", type=SHORT)
    )
    assert [e.name for e in short.entries] == [
        "agents/scribe/users/ann/memories/b",
        "agents/scribe/users/bob/memories/a",
    ]
    one_user = await api.ListMemories(
        memory_pb2.ListMemoriesRequest(parent="agents/scribe/users/bob", page_size=1)
    )
    # A token is bound to its parent: one user's token is refused for the wildcard.
    error = await rpc_error(
        api.ListMemories(
            memory_pb2.ListMemoriesRequest(
                parent="agents/scribe/users/-", page_token=one_user.next_page_token
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in violation_fields(error)
    for parent in ("agents/-/users/-", "agents/scribe/users/--", "agents/scribe/users/"):
        error = await rpc_error(
            api.ListMemories(memory_pb2.ListMemoriesRequest(parent=parent)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "parent" in violation_fields(error)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (put("agents/helper/users/u1/memory/x", 1), "entry.name"),
        (put("agents/Bad/users/u1/memories/x", 1), "entry.name"),
        (put(f"{BASE}/has space", 1), "entry.name"),
        (put(f"{BASE}/k", 1, agents_pb2.MEMORY_TYPE_UNSPECIFIED), "entry.type"),
        (put(f"{BASE}/k", "v" * 300_000), "entry.value"),
        (put(f"{BASE}/k", 1, ttl=-1), "ttl"),
        (
            memory_pb2.PutMemoryRequest(
                entry=memory_entries_pb2.MemoryEntry(name=f"{BASE}/k", type=LONG)
            ),
            "entry.value",
        ),
    ],
)
async def test_bad_memory_writes_are_refused(
    api: Api, request_: memory_pb2.PutMemoryRequest, field: str
) -> None:
    error = await rpc_error(api.PutMemory(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in violation_fields(error)


async def test_user_settings_default_then_update(api: Api) -> None:
    name = "users/u1/settings"
    defaults = (await api.GetUserSettings(memory_pb2.GetUserSettingsRequest(name=name))).settings
    assert defaults == user_settings_pb2.UserSettings(name=name)
    change = user_settings_pb2.UserSettings(
        name=name,
        default_route="fast",
        default_models={"planner": "openai/gpt-4o"},
        model_preference=user_settings_pb2.MODEL_PREFERENCE_LOCAL,
        rag_archives=["docs"],
    )
    updated = (
        await api.UpdateUserSettings(memory_pb2.UpdateUserSettingsRequest(settings=change))
    ).settings
    assert updated.default_route == "fast"
    assert dict(updated.default_models) == {"planner": "openai/gpt-4o"}
    assert updated.update_time.seconds
    partial = user_settings_pb2.UserSettings(
        name=name, rag_archives=["papers", "notes"], default_route="ignored"
    )
    updated = (
        await api.UpdateUserSettings(
            memory_pb2.UpdateUserSettingsRequest(
                settings=partial, update_mask=field_mask_pb2.FieldMask(paths=["rag_archives"])
            )
        )
    ).settings
    assert list(updated.rag_archives) == ["papers", "notes"]
    assert updated.default_route == "fast"
    assert (
        await api.GetUserSettings(memory_pb2.GetUserSettingsRequest(name=name))
    ).settings == updated
    await rpc_error(
        api.GetUserSettings(memory_pb2.GetUserSettingsRequest(name="users/u1")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await rpc_error(
        api.UpdateUserSettings(
            memory_pb2.UpdateUserSettingsRequest(
                settings=change, update_mask=field_mask_pb2.FieldMask(paths=["name"])
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_api_keys_hash_only_and_authenticate(api: Api) -> None:
    created = await api.CreateApiKey(memory_pb2.CreateApiKeyRequest(display_name="ci"))
    assert created.secret.startswith("amk_")
    assert created.api_key.tenant == api.tenant
    assert created.secret.startswith(created.api_key.prefix)
    listed = await api.ListApiKeys(memory_pb2.ListApiKeysRequest())
    assert [k.name for k in listed.api_keys] == [created.api_key.name]
    resolved = await api.AuthenticateApiKey(
        memory_pb2.AuthenticateApiKeyRequest(secret=created.secret), metadata=()
    )
    assert resolved.api_key.tenant == api.tenant
    assert resolved.api_key.last_used_time.seconds
    await rpc_error(
        api.AuthenticateApiKey(
            memory_pb2.AuthenticateApiKeyRequest(secret="amk_wrong"), metadata=()
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await api.DeleteApiKey(memory_pb2.DeleteApiKeyRequest(name=created.api_key.name))
    await rpc_error(
        api.AuthenticateApiKey(
            memory_pb2.AuthenticateApiKeyRequest(secret=created.secret), metadata=()
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_api_key_secret_is_never_stored(api: Api, db: Database) -> None:
    created = await api.CreateApiKey(
        memory_pb2.CreateApiKeyRequest(display_name="x", request_id="k-1")
    )
    replay = await api.CreateApiKey(
        memory_pb2.CreateApiKeyRequest(display_name="x", request_id="k-1")
    )
    assert replay.api_key == created.api_key
    assert replay.secret == ""
    import sqlalchemy as sa

    from agentmesh_memory.db.tables import METADATA

    async with db.read("scan") as conn:
        for table in METADATA.sorted_tables:
            for row in (await conn.execute(sa.select(table))).all():
                assert created.secret.encode() not in repr(tuple(row)).encode()
                for cell in row:
                    if isinstance(cell, bytes):
                        assert created.secret.encode() not in cell


async def test_memory_ttl_duration_is_applied(api: Api) -> None:
    request = put(f"{BASE}/t", 1)
    request.ttl.CopyFrom(duration_pb2.Duration(seconds=3600))
    entry = (await api.PutMemory(request)).entry
    assert 3590 <= entry.expire_time.seconds - entry.update_time.seconds <= 3600


async def test_the_background_sweeper_deletes_expired_rows(
    database_url: str, tenant: str, db: Database
) -> None:
    import grpc.aio
    import sqlalchemy as sa

    from agentmesh_memory.db.tables import agent_memory
    from agentmesh_memory.testing import memory_settings, start_memory

    running = await start_memory(memory_settings(database_url, sweep_interval_seconds="0.1"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            api = Api(channel, tenant)
            await create_agents(api, "helper")
            # Long enough to be seen stored on a loaded machine, short enough to be swept soon.
            await api.PutMemory(put(f"{BASE}/brief", "x", SHORT, ttl=1.5))
            await api.PutMemory(put(f"{BASE}/lasting", "y"))

            async def stored_keys() -> list[str]:
                async with db.read("check") as conn:
                    query = sa.select(agent_memory.c.key).where(agent_memory.c.tenant_id == tenant)
                    return sorted((await conn.execute(query)).scalars())

            assert await stored_keys() == ["brief", "lasting"]
            for _ in range(100):
                if await stored_keys() == ["lasting"]:
                    break
                await asyncio.sleep(0.1)
            assert await stored_keys() == ["lasting"]
    finally:
        await running.stop()
