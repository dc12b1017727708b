"""What agents know, end to end with the services as processes: user settings that pick a
local or an online deployment through the real gateway, and (called from the `up` test on the
embedded default) a research agent citing a passage of an uploaded document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh.common.v1 import agents_pb2, sessions_pb2, user_settings_pb2
from agentmesh_cli.mesh import GATEWAY, MEMORY, ORCHESTRATOR, create_api_key, start_mesh, stop_mesh
from agentmesh_client.client import AgentmeshClient

from .conftest import ORCHESTRATOR_ENV, Answer, Chat, MeshUp, ScriptedProvider

pytestmark = pytest.mark.slow

HANDBOOK = """# Expedition Handbook

The base camp kitchen serves yak butter tea at dawn, and the climbers call it the gold cup.

Oxygen bottles are stored in the blue tent beside the medical station.
"""
RESEARCHER = """\
agents:
  - id: scout
    type: research
    generation: {max_tokens: 24, temperature: 0}
"""


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def research_cites_a_passage(up: MeshUp, folder: Path) -> None:
    """A research agent on the embedded default (SmolLM2, locally) answers from an uploaded
    document: the retrieval's tool_result and the final answer cite the passage. What is
    checked comes from the orchestrator, not from the model's wording."""
    (folder / "handbook.md").write_text(HANDBOOK)
    (folder / "scout.yaml").write_text(RESEARCHER)
    made = up.cli("collections", "create", "expedition", "--name", "Expedition")
    assert made.returncode == 0, made.stderr
    uploaded = up.cli("documents", "upload", "expedition", str(folder / "handbook.md"))
    assert uploaded.returncode == 0, uploaded.stderr
    document = uploaded.stdout.split(":", 1)[0].strip()
    assert document.startswith("collections/expedition/documents/")
    found = up.cli("search", "yak butter tea", "--collection", "expedition")
    assert found.returncode == 0, found.stderr
    assert document in found.stdout
    answered = up.cli(
        "run",
        "What does the base camp kitchen serve at dawn?",
        "--agents",
        str(folder / "scout.yaml"),
        "--strategy",
        "round-robin",
        "--max-rounds",
        "1",
        "--context",
        "collection_id=expedition",
        "--json",
        timeout=180,
    )
    assert answered.returncode == 0, answered.stdout[-2000:] + answered.stderr
    events = _events(answered.stdout)
    results = [e["toolResult"] for e in events if "toolResult" in e]
    retrieval = results[0]
    assert retrieval["toolName"] == "search_documents"
    assert retrieval["citations"][0]["document"] == document
    assert "yak butter tea" in retrieval["citations"][0]["text"]
    completed = events[-1]["sessionCompleted"]
    assert completed["citations"][0]["document"] == document
    finished = [e["messageCompleted"] for e in events if "messageCompleted" in e]
    assert finished
    assert all(f["provider"] == "local" for f in finished)
    stats = up.cli("agents", "stats", "scout")
    assert stats.returncode == 0, stats.stderr
    assert "turns: 1" in " ".join(stats.stdout.split()), stats.stdout


def answer_as(name: str) -> Any:
    def script(chat: Chat) -> Answer:
        return Answer(text=f"answered by the {name} deployment")

    return script


@pytest.fixture
async def two_localities(tmp_path: Path) -> AsyncIterator[tuple[AgentmeshClient, list[Any]]]:
    """Memory, the real gateway and the orchestrator as processes; the route `default` has
    an online deployment first and a local one (an OpenAI-compatible server marked local)."""
    online = await ScriptedProvider(answer_as("online")).start()
    local = await ScriptedProvider(answer_as("local")).start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n  default:\n"
        f"    - {{name: online, provider: openai_compatible, model: big,"
        f" base_url: 'http://127.0.0.1:{online.port}/v1', max_retries: 0}}\n"
        f"    - {{name: workstation, provider: openai_compatible, model: small, locality: local,"
        f" base_url: 'http://127.0.0.1:{local.port}/v1', priority: 1, max_retries: 0}}\n"
    )
    specs = (MEMORY, GATEWAY, ORCHESTRATOR)
    running = await start_mesh(
        tmp_path,
        ports={spec.name: 0 for spec in specs},
        specs=specs,
        extra_env={
            GATEWAY.name: {"AGENTMESH_GATEWAY_ROUTES_FILE": str(routes)},
            ORCHESTRATOR.name: dict(ORCHESTRATOR_ENV),
        },
    )
    try:
        by_name = {service.spec.name: service for service in running}
        key = await create_api_key(by_name[MEMORY.name].address, "settings", "e2e")
        async with AgentmeshClient(
            by_name[ORCHESTRATOR.name].address, api_key=key, timeout=20
        ) as client:
            yield client, [online, local]
    finally:
        await stop_mesh(running)
        await online.stop()
        await local.stop()


async def test_the_local_or_online_setting_picks_the_deployment_of_a_session(
    two_localities: tuple[AgentmeshClient, list[Any]],
) -> None:
    client, (online, local) = two_localities
    writer = agents_pb2.AgentDefinition(
        name="writer",
        type=agents_pb2.AGENT_TYPE_CUSTOM,
        prompts=agents_pb2.AgentPrompts(system="You are writer."),
    )  # names no model: the user's settings decide

    async def answer(user: str) -> str:
        session = await client.create_session(
            goal="Say hello",
            inline_agents=[writer],
            limits=sessions_pb2.SessionLimits(max_rounds=1),
            metadata={"user": user},
        )
        events = [e async for e in client.run(session.name)]
        return events[-1].session_completed.final_answer

    assert await answer("nobody") == "answered by the online deployment", "priority decides"
    for preference, expected in (
        (user_settings_pb2.MODEL_PREFERENCE_LOCAL, "local"),
        (user_settings_pb2.MODEL_PREFERENCE_ONLINE, "online"),
    ):
        await client.update_user_settings(
            user_settings_pb2.UserSettings(name="users/ann/settings", model_preference=preference),
            fields=["model_preference"],
        )
        assert await answer("ann") == f"answered by the {expected} deployment"
    assert len(local.requests) == 1
    assert len(online.requests) == 2
