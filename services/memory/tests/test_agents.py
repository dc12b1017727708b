"""Agents: create (unique name per tenant), get, list (paged, by type), update (mask), delete."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from agentmesh.common.v1 import agents_pb2, generation_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.testing import Api, rpc_error, violation_fields

EXECUTOR = agents_pb2.AGENT_TYPE_EXECUTOR
PLANNER = agents_pb2.AGENT_TYPE_PLANNER


def definition(**fields: object) -> agents_pb2.AgentDefinition:
    fields.setdefault("type", EXECUTOR)
    return agents_pb2.AgentDefinition(**fields)  # type: ignore[arg-type]


async def create(api: Api, agent_id: str, **fields: object) -> agents_pb2.AgentDefinition:
    response = await api.CreateAgent(
        memory_pb2.CreateAgentRequest(agent_id=agent_id, agent=definition(**fields))
    )
    return response.agent  # type: ignore[no-any-return]


async def test_create_stores_the_definition_and_get_returns_it(api: Api) -> None:
    agent = await create(
        api,
        "researcher",
        description="finds facts",
        model=agents_pb2.ModelSelection(route="default"),
        generation=generation_pb2.GenerationConfig(temperature=0.3, stop=["END"]),
        prompts=agents_pb2.AgentPrompts(system="be brief", user_template="{goal}"),
        tools=["search"],
        capabilities=["web"],
        memory_policy=agents_pb2.MemoryPolicy(read=True, types=[agents_pb2.MEMORY_TYPE_LONG_TERM]),
    )
    assert agent.name == "agents/researcher"
    assert agent.HasField("create_time")
    assert agent.update_time == agent.create_time
    got = (await api.GetAgent(memory_pb2.GetAgentRequest(name="agents/researcher"))).agent
    assert got == agent
    assert got.generation.temperature == pytest.approx(0.3)
    assert list(got.tools) == ["search"]


async def test_name_is_unique_per_tenant_but_not_across_tenants(api: Api) -> None:
    await create(api, "solo")
    error = await rpc_error(create(api, "solo"), grpc.StatusCode.ALREADY_EXISTS)
    assert error.reason == "AGENT_EXISTS"
    other = api.as_tenant(api.tenant + "-other")
    assert (await create(other, "solo")).name == "agents/solo"


async def test_repeated_request_id_returns_the_original_and_writes_once(api: Api) -> None:
    request = memory_pb2.CreateAgentRequest(
        agent_id="idem", agent=definition(description="first"), request_id="req-1"
    )
    first = (await api.CreateAgent(request)).agent
    again = (await api.CreateAgent(request)).agent
    assert again == first
    listed = (await api.ListAgents(memory_pb2.ListAgentsRequest())).agents
    assert [a.name for a in listed] == ["agents/idem"]
    # The same request_id with a different body is refused rather than silently answered.
    changed = memory_pb2.CreateAgentRequest(
        agent_id="idem", agent=definition(description="second"), request_id="req-1"
    )
    error = await rpc_error(api.CreateAgent(changed), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.reason == "REQUEST_ID_REUSED"


async def test_list_pages_in_name_order_and_filters_by_type(api: Api) -> None:
    for index in range(7):
        await create(api, f"agent-{index}", type=PLANNER if index % 2 else EXECUTOR)
    names: list[str] = []
    token = ""
    while True:
        page = await api.ListAgents(memory_pb2.ListAgentsRequest(page_size=3, page_token=token))
        assert len(page.agents) <= 3
        names.extend(a.name for a in page.agents)
        token = page.next_page_token
        if not token:
            break
    assert names == [f"agents/agent-{i}" for i in range(7)]
    planners = await api.ListAgents(memory_pb2.ListAgentsRequest(type=PLANNER))
    assert [a.name for a in planners.agents] == [
        "agents/agent-1",
        "agents/agent-3",
        "agents/agent-5",
    ]
    # A token is bound to its filters.
    first = await api.ListAgents(memory_pb2.ListAgentsRequest(page_size=1))
    await rpc_error(
        api.ListAgents(
            memory_pb2.ListAgentsRequest(
                page_size=1, page_token=first.next_page_token, type=PLANNER
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_update_changes_only_masked_fields(api: Api) -> None:
    original = await create(
        api, "editor", description="old", tools=["a"], prompts=agents_pb2.AgentPrompts(system="s")
    )
    change = definition(name="agents/editor", description="new", tools=["b", "c"], type=PLANNER)
    updated = (
        await api.UpdateAgent(
            memory_pb2.UpdateAgentRequest(
                agent=change, update_mask=field_mask_pb2.FieldMask(paths=["description", "tools"])
            )
        )
    ).agent
    assert updated.description == "new"
    assert list(updated.tools) == ["b", "c"]
    assert updated.type == EXECUTOR  # not in the mask
    assert updated.prompts.system == "s"
    assert updated.create_time == original.create_time
    assert updated.update_time.ToDatetime() >= original.update_time.ToDatetime()
    nested = definition(
        name="agents/editor", prompts=agents_pb2.AgentPrompts(user_template="{goal}!")
    )
    updated = (
        await api.UpdateAgent(
            memory_pb2.UpdateAgentRequest(
                agent=nested, update_mask=field_mask_pb2.FieldMask(paths=["prompts.user_template"])
            )
        )
    ).agent
    assert updated.prompts.system == "s"
    assert updated.prompts.user_template == "{goal}!"


async def test_update_rejects_bad_masks_and_values(api: Api) -> None:
    await create(api, "strict")
    for paths in (["name"], ["create_time"], ["no_such_field"]):
        await rpc_error(
            api.UpdateAgent(
                memory_pb2.UpdateAgentRequest(
                    agent=definition(name="agents/strict"),
                    update_mask=field_mask_pb2.FieldMask(paths=paths),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    bad = definition(
        name="agents/strict", generation=generation_pb2.GenerationConfig(temperature=3)
    )
    error = await rpc_error(
        api.UpdateAgent(
            memory_pb2.UpdateAgentRequest(
                agent=bad, update_mask=field_mask_pb2.FieldMask(paths=["generation"])
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "agent.generation.temperature" in violation_fields(error)
    stored = (await api.GetAgent(memory_pb2.GetAgentRequest(name="agents/strict"))).agent
    assert not stored.generation.HasField("temperature")  # nothing half-written
    await rpc_error(
        api.UpdateAgent(memory_pb2.UpdateAgentRequest(agent=definition(name="agents/missing"))),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_delete_removes_the_agent(api: Api) -> None:
    await create(api, "temp")
    await api.DeleteAgent(memory_pb2.DeleteAgentRequest(name="agents/temp", request_id="del-1"))
    # A retry with the same request_id succeeds again; without one it is NOT_FOUND.
    await api.DeleteAgent(memory_pb2.DeleteAgentRequest(name="agents/temp", request_id="del-1"))
    await rpc_error(
        api.DeleteAgent(memory_pb2.DeleteAgentRequest(name="agents/temp")),
        grpc.StatusCode.NOT_FOUND,
    )
    error = await rpc_error(
        api.GetAgent(memory_pb2.GetAgentRequest(name="agents/temp")), grpc.StatusCode.NOT_FOUND
    )
    assert error.reason == "AGENT_NOT_FOUND"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (memory_pb2.CreateAgentRequest(agent_id="", agent=definition()), "agent_id"),
        (memory_pb2.CreateAgentRequest(agent_id="Bad_Name", agent=definition()), "agent_id"),
        (memory_pb2.CreateAgentRequest(agent_id="x" * 64, agent=definition()), "agent_id"),
        (
            memory_pb2.CreateAgentRequest(agent_id="ok", agent=agents_pb2.AgentDefinition()),
            "agent.type",
        ),
        (
            memory_pb2.CreateAgentRequest(
                agent_id="ok", agent=definition(generation=generation_pb2.GenerationConfig(top_p=2))
            ),
            "agent.generation.top_p",
        ),
        (
            memory_pb2.CreateAgentRequest(agent_id="ok", agent=definition(description="d" * 5000)),
            "agent.description",
        ),
    ],
)
async def test_create_rejects_bad_input_with_field_violations(
    api: Api, request_: memory_pb2.CreateAgentRequest, field: str
) -> None:
    error = await rpc_error(api.CreateAgent(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in violation_fields(error)


def _schema(value: dict[str, object]) -> generation_pb2.GenerationConfig:
    config = generation_pb2.GenerationConfig()
    config.response_schema.update(value)
    return config


@pytest.mark.parametrize(
    "schema",
    [{"type": 12}, {"type": "objekt"}, {"properties": {"a": {"minLength": -1}}}],
    ids=["type-not-a-string", "unknown-type", "negative-minLength"],
)
async def test_a_response_schema_that_is_not_a_json_schema_is_refused_where_it_enters(
    api: Api, schema: dict[str, object]
) -> None:
    error = await rpc_error(
        api.CreateAgent(
            memory_pb2.CreateAgentRequest(
                agent_id="structured", agent=definition(generation=_schema(schema))
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"agent.generation.response_schema"}
    assert "agent.generation.response_schema" in error.message
    await create(api, "structured", generation=_schema({"type": "object"}))
    error = await rpc_error(
        api.UpdateAgent(
            memory_pb2.UpdateAgentRequest(
                agent=definition(name="agents/structured", generation=_schema(schema)),
                update_mask=field_mask_pb2.FieldMask(paths=["generation"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"agent.generation.response_schema"}


@pytest.mark.parametrize("name", ["", "agents", "agents/", "agent/x", "agents/x/y", "agents/UPPER"])
async def test_malformed_names_are_invalid(api: Api, name: str) -> None:
    error = await rpc_error(
        api.GetAgent(memory_pb2.GetAgentRequest(name=name)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violation_fields(error) == {"name"}


@pytest.mark.parametrize("size", [-1, 1001])
async def test_page_size_out_of_range_is_invalid(api: Api, size: int) -> None:
    error = await rpc_error(
        api.ListAgents(memory_pb2.ListAgentsRequest(page_size=size)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"page_size"}


async def test_garbage_page_token_is_invalid(api: Api) -> None:
    error = await rpc_error(
        api.ListAgents(memory_pb2.ListAgentsRequest(page_token="not-a-token")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"page_token"}


async def test_missing_tenant_is_unauthenticated(api: Api) -> None:
    await rpc_error(
        api.ListAgents(memory_pb2.ListAgentsRequest(), metadata=()), grpc.StatusCode.UNAUTHENTICATED
    )
