"""What agents know, through the public API over a real memory service (SQLite and
PostgreSQL), models scripted: documents and citations, settings that take effect, addressed
messages, memory recall, statistics."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from agentmesh.common.v1 import (
    agents_pb2,
    knowledge_pb2,
    messages_pb2,
    sessions_pb2,
    user_settings_pb2,
)
from agentmesh.inference.v1 import inference_pb2
from agentmesh.orchestrator.v1 import knowledge_pb2 as kpb
from agentmesh_common import InvalidArgument, NotFound
from agentmesh_orchestrator.testing import Reply, last_user_content, system_prompt

from .api_mesh import agent, collect, kinds, start_mesh

HANDBOOK = (
    "# Field Handbook\n\n"
    "Glaciers advance about three meters per day in the Khumbu valley during spring.\n\n"
    "The base camp kitchen opens at six in the morning and closes at nine at night.\n"
)
ARCHIVE = "Glaciers in the Alps retreat every summer; the Rhone glacier lost forty meters."


def research(agent_id: str = "scout", **fields: object) -> agents_pb2.AgentDefinition:
    definition = agent(agent_id, **fields)
    definition.type = agents_pb2.AGENT_TYPE_RESEARCH
    definition.prompts.system = ""  # the research default, which cites numbered sources
    return definition


def tool_results(events: list) -> list:  # type: ignore[type-arg]
    return [e.tool_result for e in events if e.HasField("tool_result")]


async def test_research_agents_retrieve_and_cite_passages_of_the_sessions_documents(
    database_url: str,
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        prompt = last_user_content(request)
        if request.tools and not any(m.role == messages_pb2.ROLE_TOOL for m in request.messages):
            arguments = struct_pb2.Struct()
            arguments.update({"query": "kitchen opening hours"})
            call = messages_pb2.ToolCall(id="t1", name="search_documents", arguments=arguments)
            return Reply(text="", tool_calls=[call])
        cited = "[1]" if "Sources from the user's documents" in prompt else "no sources"
        return Reply(text=f"Glaciers advance three meters a day {cited}.")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            await client.create_collection("handbook", display_name="Handbook")
            handbook = await client.upload_document(
                "collections/handbook", HANDBOOK.encode(), display_name="handbook.md"
            )
            await client.create_collection("archive")
            archived = await client._call(  # the HTTP form, over gRPC
                client._stub.ImportDocument,
                kpb.ImportDocumentRequest(
                    parent="collections/archive",
                    document=knowledge_pb2.Document(display_name="alps.txt"),
                    content=ARCHIVE.encode(),
                ),
            )
            assert archived.document.chunk_count == 1
            session = await client.create_session(
                goal="How fast do glaciers advance in the Khumbu valley?",
                inline_agents=[research()],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
                metadata={"collection_id": "handbook"},
            )
            events = await collect(client.run(session.name))
        assert kinds(events)[-1] == "session_completed"
        retrieval, asked = tool_results(events)
        assert retrieval.tool_name == "search_documents"
        assert retrieval.tool_call_id.startswith("retrieval-")
        assert retrieval.citations[0].document == handbook.name
        assert "three meters per day" in retrieval.citations[0].text
        assert all(c.document == handbook.name for c in retrieval.citations), "the session's scope"
        passages = MessageToDict(retrieval.result)["passages"]
        assert passages[0]["document"] == handbook.name
        assert passages[0]["ref"] == 1
        # The model called the tool too; its result carries citations the same way.
        assert asked.tool_call_id == "t1"
        assert asked.citations
        assert "kitchen" in asked.citations[0].text
        # The prompt held the numbered sources, so the answer cites them...
        first = next(r for r in mesh.gateway.requests if r.agent == "agents/scout")
        assert "[1] (Field Handbook, passage 1)" in last_user_content(first)
        assert "cite them as [1]" in system_prompt(first)
        final = events[-1].session_completed
        assert final.final_answer.endswith("[1].")
        # ...and the final answer's metadata lists every passage retrieved, once.
        cited = [(c.document, c.chunk_index) for c in final.citations]
        assert cited[0] == (handbook.name, retrieval.citations[0].chunk_index)
        assert len(cited) == len(set(cited)) >= 1
    finally:
        await shutdown()


async def test_user_settings_choose_models_locality_and_default_archives(
    database_url: str,
) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        return Reply(text=f"served by {request.route or request.provider}")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            for collection, text in (("mine", HANDBOOK), ("theirs", ARCHIVE)):
                await client.create_collection(collection)
                await client.upload_document(f"collections/{collection}", text.encode())
            await client.update_user_settings(
                user_settings_pb2.UserSettings(
                    name="users/ann/settings",
                    default_route="fast",
                    default_models={"research": "openai/gpt-4.1-mini"},
                    model_preference=user_settings_pb2.MODEL_PREFERENCE_LOCAL,
                    rag_archives=["mine"],
                )
            )
            unnamed = agent("plain")
            unnamed.ClearField("model")
            named = agent("pinned")  # names the route "default": settings do not override it
            scout = research("scout")
            scout.ClearField("model")
            session = await client.create_session(
                goal="Glaciers",
                inline_agents=[unnamed, named, scout],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
                metadata={"user": "ann"},
            )
            events = await collect(client.run(session.name))
            by_agent = {r.agent: r for r in mesh.gateway.requests}
            assert by_agent["agents/plain"].route == "fast", "the user's default route"
            assert (by_agent["agents/scout"].provider, by_agent["agents/scout"].model) == (
                "openai",
                "gpt-4.1-mini",
            ), "the user's default model for research agents"
            assert by_agent["agents/pinned"].route == "default"
            assert {r.model_preference for r in mesh.gateway.requests} == {
                user_settings_pb2.MODEL_PREFERENCE_LOCAL
            }
            retrieval = tool_results(events)[0]
            assert {c.document.split("/documents/")[0] for c in retrieval.citations} == {
                "collections/mine"
            }, "the user's default archives, not every collection"

            # Another user, no settings: the orchestrator's route, no preference, no archives.
            mesh.gateway.requests.clear()
            other = await client.create_session(
                goal="Glaciers",
                inline_agents=[unnamed, scout],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
                metadata={"user": "bob"},
            )
            plain_events = await collect(client.run(other.name))
            assert {r.route for r in mesh.gateway.requests} == {""}
            assert {r.model_preference for r in mesh.gateway.requests} == {0}
            assert not tool_results(plain_events), "no documents to search: no retrieval"

            # Built-in agents follow the user's default route when the session names none.
            mesh.gateway.requests.clear()
            routed = [e async for e in client.execute("Say hello", context={"user": "ann"})]
            assert routed[-1].WhichOneof("payload") == "session_completed"
            assert {r.route for r in mesh.gateway.requests} == {"fast"}
    finally:
        await shutdown()


async def test_addressed_messages_reach_only_their_recipients(database_url: str) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        if request.agent == "agents/alice" and not any(
            m.role == messages_pb2.ROLE_TOOL for m in request.messages
        ):
            arguments = struct_pb2.Struct()
            arguments.update(
                {"to": ["bob"], "type": "request", "content": "Bob, count the apples please."}
            )
            call = messages_pb2.ToolCall(id="m1", name="send_message", arguments=arguments)
            return Reply(tool_calls=[call])
        return Reply(text=f"{request.agent} speaks")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            session = await client.create_session(
                goal="Count fruit",
                inline_agents=[
                    agent("alice", tools=["send_message"]),
                    agent("bob"),
                    agent("carol"),
                ],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
            )
            events = await collect(client.run(session.name))
            details = await client.get_session(session.name)
        sent = [e for e in events if e.HasField("agent_message")]
        assert len(sent) == 1
        message = sent[0].agent_message
        assert (message.from_agent, list(message.to_agents), message.type) == (
            "agents/alice",
            ["agents/bob"],
            messages_pb2.MESSAGE_TYPE_REQUEST,
        )
        assert [(m.from_agent, list(m.to_agents), m.content) for m in details.agent_messages] == [
            ("agents/alice", ["agents/bob"], "Bob, count the apples please.")
        ]

        def seen_by(name: str) -> str:
            return "\n".join(
                m.content for r in mesh.gateway.requests if r.agent == name for m in r.messages
            )

        assert "[request from alice to you] Bob, count the apples please." in seen_by("agents/bob")
        assert "count the apples" not in seen_by("agents/carol"), "only its recipient sees it"
        assert kinds(events)[-1] == "session_completed"
    finally:
        await shutdown()


async def test_memories_are_recalled_into_context_by_relevance(database_url: str) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        return Reply(text="noted")

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client:
            definition = agent("chef")
            definition.memory_policy.read = True
            definition.memory_policy.max_entries_in_context = 2
            await client.create_agent("chef", definition)
            base = "agents/chef/users/ann/memories"
            values = {
                "favorite_cuisine": "spicy Thai curry",
                "allergy": "peanuts",
                "dog": "a beagle called Biscuit",
                "car": "a red bicycle",
            }
            for key, text in values.items():
                await client.put_memory(f"{base}/{key}", struct_pb2.Value(string_value=text))
            session = await client.create_session(
                goal="Suggest a curry dinner for Ann",
                agents=["agents/chef"],
                limits=sessions_pb2.SessionLimits(max_rounds=1),
                metadata={"user": "ann"},
            )
            await collect(client.run(session.name))
            recalled = await client.get_memory(f"{base}/favorite_cuisine")
            found = await client.search_memories("agents/chef/users/ann", "bicycle")
        system = system_prompt(mesh.gateway.requests[0])
        assert "What you remember about this user" in system
        assert 'favorite_cuisine: "spicy Thai curry"' in system
        assert system.count("\n- ") == 2, "at most max_entries_in_context"
        assert recalled.access_count == 2, "recall counted as a read, then this get"
        assert [e.name.rsplit("/", 1)[-1] for e in found] == ["car"]
    finally:
        await shutdown()


async def test_public_api_for_collections_stats_and_their_errors(database_url: str) -> None:
    def script(request: inference_pb2.GenerateRequest) -> Reply:
        return Reply(text="done", chunks=2)

    mesh, shutdown = await start_mesh(database_url, script)
    try:
        async with mesh.client() as client, mesh.client("globex") as stranger:
            await client.create_collection("notes")
            doc = await client.upload_document(
                "collections/notes", b"Kestrels hover.", display_name="k.txt"
            )
            assert [c.document_count for c in await client.list_collections()] == [1]
            hits = await client.search_documents("kestrels", parent="collections/notes")
            assert hits.results[0].citation.document == doc.name
            assert "<mark>Kestrels</mark>" in hits.results[0].snippet
            with pytest.raises(InvalidArgument) as bad:
                await client._call(
                    client._stub.ImportDocument,
                    kpb.ImportDocumentRequest(
                        parent="collections/notes",
                        document=knowledge_pb2.Document(display_name="bad.txt"),
                        content=b"\xff\xfe",
                    ),
                )
            assert [v.field for v in bad.value.violations] == ["content"]
            assert "bad.txt" in bad.value.message
            for call in (
                stranger.get_collection("collections/notes"),
                stranger.get_document(doc.name),
                stranger.search_documents("kestrels", parent="collections/notes"),
                stranger.upload_document("collections/notes", b"x"),
            ):
                with pytest.raises(NotFound):
                    await call
            assert not (await stranger.search_documents("kestrels")).results

            await client.create_agent("counter", agent("counter", tools=["calculator"]))
            session = await client.create_session(
                goal="Count",
                agents=["agents/counter"],
                limits=sessions_pb2.SessionLimits(max_rounds=2),
            )
            events = await collect(client.run(session.name))
            stats = await client.agent_stats("agents/counter")
            completed = [e.message_completed for e in events if e.HasField("message_completed")]
            assert stats.turns == stats.model_calls == len(completed) == 2
            assert stats.sessions == 1
            assert stats.usage.total_tokens == sum(c.usage.total_tokens for c in completed)
            assert stats.errors == 0
            assert stats.HasField("last_active_time")
            with pytest.raises(NotFound):
                await stranger.agent_stats("agents/counter")
            await client.put_memory(
                "agents/counter/users/u/memories/k", struct_pb2.Value(string_value="v")
            )
            memory = await client.memory_stats("agents/counter/users/-")
            assert (memory.total.entries, [s.user for s in memory.stats]) == (1, ["u"])
            with pytest.raises(NotFound):
                await client.put_memory(
                    "agents/nobody/users/u/memories/k", struct_pb2.Value(string_value="v")
                )
            assert json.loads(json.dumps(MessageToDict(stats)))["agent"] == "agents/counter"
    finally:
        await shutdown()


async def test_a_bad_upload_stream_is_answered_at_once_not_left_to_its_deadline(
    database_url: str,
) -> None:
    """A client stream whose message holds no part, or does not decode, is INVALID_ARGUMENT
    naming the field as soon as it is read (it used to hang until the client's deadline)."""
    mesh, shutdown = await start_mesh(database_url, lambda _: Reply(text="x"))
    try:
        async with mesh.client() as client:
            await client.create_collection("notes")
            metadata = (("authorization", f"Bearer {mesh.keys['acme']}"),)
            upload = client._channel.stream_unary(
                "/agentmesh.orchestrator.v1.OrchestratorService/UploadDocument"
            )
            for message, field in (
                (kpb.UploadDocumentRequest().SerializeToString(), "part"),
                (b"\xff\xff\xff", "request"),
            ):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await upload(iter([message]), metadata=metadata, timeout=8)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
                assert field in (caught.value.details() or "")
                assert time.monotonic() - started < 5
            # The memory service refuses the first part (data before the header) while the
            # caller still sends 200 more: the relay drops them, then answers its error.
            headless = [kpb.UploadDocumentRequest(data=b"x" * 16_384).SerializeToString()] * 200
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await upload(iter(headless), metadata=metadata, timeout=8)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
                assert "header" in (caught.value.details() or "")
    finally:
        await shutdown()
