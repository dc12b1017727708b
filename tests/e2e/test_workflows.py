"""Workflows end to end (issue 14): the services as processes, a scripted OpenAI-format
provider behind the real gateway. The seed's two examples through the `agentmesh` command line
and the example files; two orchestrator replicas on PostgreSQL, the first killed with SIGKILL
while it holds place-agent runs and a schedule: the second fires each exactly once, and the
event stream opened on the first resumes on the second without a gap or a repeat."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict, ParseDict

from agentmesh.common.v1 import sessions_pb2
from agentmesh.workflow.v1 import schedule_pb2, workflow_pb2
from agentmesh_cli.mesh import ORCHESTRATOR, ServiceProcess
from agentmesh_cli.teams import load_agents
from agentmesh_memory.testing import (
    PostgresUnavailable,
    create_database,
    drop_database,
    postgres_server,
)

from .conftest import (
    AGENTMESH,
    CLI_ENV,
    ORCHESTRATOR_ENV,
    Answer,
    Chat,
    Mesh,
    start_e2e_mesh,
    stop_e2e_mesh,
    system_of,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "workflows"
WORKFLOW_ENV = {
    "AGENTMESH_ORCHESTRATOR_WORKFLOW_POLL_SECONDS": "0.2",
    "AGENTMESH_ORCHESTRATOR_WORKFLOW_CLAIM_SECONDS": "2",
}


def seed_script(delay: float = 0.0) -> Callable[[Chat], Answer]:
    def answer(chat: Chat) -> Answer:
        system = system_of(chat)
        if "review" in system:
            fields: dict[str, Any] = {"assessment": "approve", "confidence_score": 0.9}
        elif "classify" in system:
            fields = {"category": "tutorial", "confidence_score": 0.8}
        else:
            return Answer(text="A short digest.", delay_seconds=delay)
        return Answer(text=json.dumps(fields), delay_seconds=delay)

    return answer


async def cli(mesh: Mesh, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        AGENTMESH,
        *args,
        env={
            **os.environ,
            **CLI_ENV,
            "AGENTMESH_TARGET": mesh.orchestrator.address,
            "AGENTMESH_API_KEY": mesh.api_key,
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, f"agentmesh {' '.join(args)}: {err.decode()}"
    return out.decode()


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.1)


async def test_the_seed_examples_run_from_their_files_through_the_cli(tmp_path: Path) -> None:
    mesh = await start_e2e_mesh(tmp_path, seed_script(), runner=False, orchestrator=WORKFLOW_ENV)
    try:
        await cli(mesh, "agents", "create", str(EXAMPLES / "agents.yaml"))
        created = await cli(mesh, "workflows", "create", str(EXAMPLES / "document-review.yaml"))
        assert created.strip() == "created workflows/document-review"
        await cli(mesh, "workflows", "create", str(EXAMPLES / "classification.yaml"))

        token = json.loads(
            await cli(
                mesh,
                *("workflows", "add-token", "document-review", "--json"),
                *("--data", '{"content": "Quarterly results are up 4%."}'),
                *("--metadata", '{"type": "memo", "priority": "high"}'),
            )
        )
        assert token["place"] == "submitted"
        fired = json.loads(
            await cli(mesh, "workflows", "fire", token["name"], "ai_review", "--json")
        )
        assert fired["fired"] is True
        assert fired["token"]["place"] == "reviewed"
        assert fired["token"]["data"]["review_result"] == "approve"
        assert fired["token"]["metadata"]["reviewer"] == "agents/content-reviewer"
        review = next(c for c in mesh.provider.requests if "review" in system_of(c))
        assert "Quarterly results" in json.dumps(review["messages"])
        assert "response_format" in review, "the reviewer's answer is held to its schema"

        await cli(
            mesh,
            *("workflows", "add-token", "classification"),
            *("--data", '{"content": "How to bake bread in ten steps."}'),
            *("--metadata", '{"type": "article", "status": "unclassified"}'),
        )

        async def categorized() -> bool:
            listed = await cli(
                mesh, "workflows", "tokens", "classification", "--place", "categorized", "--json"
            )
            return len(json.loads(listed)) == 1

        await until(categorized)  # the seed's 5 s initial delay, then the agent
        shown = json.loads(await cli(mesh, "workflows", "show", "classification", "--json"))
        assert shown["tokenCounts"] == {"categorized": "1"}
        watched = await cli(mesh, "workflows", "watch", "classification", "--limit", "7", "--json")
        events = [json.loads(line) for line in watched.splitlines()]
        payloads = [
            next(k for k in e if k not in ("workflow", "seq", "time", "token")) for e in events
        ]
        assert payloads == [
            "tokenCreated",
            "scheduleFired",
            "placeAgentTriggered",
            "agentRun",
            "transitionStarted",
            "transitionCompleted",
            "tokenMoved",
        ]
        table = await cli(mesh, "workflows", "show", "classification")
        assert "categorized\t1" in table

        created = await cli(mesh, "schedules", "create", str(EXAMPLES / "daily-digest.yaml"))
        assert created.startswith("created schedules/daily-digest; first run ")
        (listed,) = json.loads(await cli(mesh, "schedules", "list", "--json"))
        assert listed["cron"] == "0 8 * * *"
        assert listed["timeZone"] == "Europe/Berlin"
        due = listed["nextRunTime"]
        assert due.endswith(("06:00:00Z", "07:00:00Z")), due  # 08:00 in Berlin, in UTC
        assert (await cli(mesh, "schedules", "pause", "daily-digest")).strip() == (
            "paused schedules/daily-digest"
        )
        shown = json.loads(await cli(mesh, "schedules", "show", "daily-digest", "--json"))
        assert shown["paused"] is True
        await cli(mesh, "schedules", "resume", "daily-digest")
        await cli(mesh, "schedules", "delete", "daily-digest")
        assert json.loads(await cli(mesh, "schedules", "list", "--json")) == []
    finally:
        await stop_e2e_mesh(mesh)


@pytest.fixture
def postgres_url() -> Any:
    try:
        server = postgres_server()
    except PostgresUnavailable as error:  # pragma: no cover - CI has PostgreSQL
        pytest.fail(f"PostgreSQL is needed for this test: {error}")
    url = create_database(server, "agentmesh_wf")
    yield url
    drop_database(server, url)


def replica(mesh: Mesh, name: str) -> ServiceProcess:
    return ServiceProcess(
        ORCHESTRATOR,
        {
            **ORCHESTRATOR_ENV,
            **WORKFLOW_ENV,
            "AGENTMESH_ORCHESTRATOR_PORT": "0",
            "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": mesh.services["memory"].address,
            "AGENTMESH_ORCHESTRATOR_GATEWAY_TARGET": mesh.services["inference-gateway"].address,
            "AGENTMESH_ORCHESTRATOR_REPLICA_ID": name,
        },
        log_path=mesh.data_dir / "logs" / f"orchestrator-{name}.log",
    )


async def test_a_killed_replica_s_due_work_fires_exactly_once_on_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    mesh = await start_e2e_mesh(
        tmp_path,
        seed_script(delay=2.0),
        runner=False,
        orchestrator=WORKFLOW_ENV,
        memory={"AGENTMESH_MEMORY_DATABASE_URL": postgres_url},
    )
    replica_b = replica(mesh, "replica-b")
    try:
        async with mesh.client() as client_a:
            for agent in load_agents(EXAMPLES / "agents.yaml"):
                await client_a.create_agent(agent.name.removeprefix("agents/"), agent)
            definition = ParseDict(
                {
                    "places": [{"id": "pending"}, {"id": "categorized"}],
                    "transitions": [
                        {"id": "done", "fromPlaces": ["pending"], "toPlace": "categorized"}
                    ],
                    "placeAgents": [
                        {
                            "id": "classifier",
                            "place": "pending",
                            "execution": {
                                "agent": "agents/content-classifier",
                                "inputMapping": {"content": "data.content"},
                                "outputMapping": {"data.classification": "category"},
                            },
                            "autoTransition": "done",
                        }
                    ],
                },
                workflow_pb2.Workflow(),
            )
            workflow = await client_a.create_workflow(definition, workflow_id="sorting")
            tokens = [
                (await client_a.create_token(workflow.name, data={"content": f"text {i}"})).name
                for i in range(6)
            ]
            template = ParseDict(
                {
                    "goal": "Digest, run {run_number}",
                    "inlineAgents": [
                        {
                            "name": "digest-writer",
                            "type": "AGENT_TYPE_CUSTOM",
                            "model": {"route": "default"},
                            "prompts": {"system": "You write digests."},
                        }
                    ],
                },
                sessions_pb2.Session(),
            )
            template.limits.max_rounds = 1
            schedule = schedule_pb2.Schedule(
                session_template=template, max_runs=3, max_concurrent_runs=3
            )
            schedule.interval.FromSeconds(1)
            schedule_name = (await client_a.create_schedule(schedule, schedule_id="digest")).name

            seen: list[workflow_pb2.WorkflowEvent] = []

            async def follow() -> None:
                async for event in client_a.workflow_events(workflow.name):
                    seen.append(event)

            follower = asyncio.create_task(follow())

            async def busy() -> bool:
                return len(mesh.provider.requests) >= 3

            await until(busy, 60)  # replica A holds claims and is waiting for answers
            process = mesh.orchestrator.process
            assert process is not None
            process.send_signal(signal.SIGKILL)
            await process.wait()
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

        await replica_b.start()
        async with mesh.client(replica_b) as client_b:

            async def all_moved() -> bool:
                listed = await client_b.list_tokens(workflow.name, place="categorized")
                return len(listed) == len(tokens)

            async def all_ran() -> bool:
                return (await client_b.get_schedule(schedule_name)).runs_started == 3

            await until(all_moved, 120)
            await until(all_ran, 120)
            last = (await client_b.get_workflow(workflow.name)).last_event_seq
            after = seen[-1].seq if seen else 0
            rest: list[workflow_pb2.WorkflowEvent] = []

            async def resume() -> None:
                async for event in client_b.workflow_events(workflow.name, after_seq=after):
                    rest.append(event)
                    if event.seq >= last:
                        return

            await asyncio.wait_for(resume(), 30)
            for name in tokens:
                token = await client_b.get_token(name)
                assert [m.to_place for m in token.history] == ["categorized"]
                assert MessageToDict(token.data)["classification"] == "tutorial"
            finished = await client_b.get_schedule(schedule_name)
            sessions = [s async for s in client_b.list_sessions()]
    finally:
        await replica_b.stop()
        await stop_e2e_mesh(mesh)

    every = seen + rest
    assert [e.seq for e in every] == list(range(1, len(every) + 1)), "no gap, no repeat"
    per_token = Counter(
        (e.token, e.WhichOneof("payload"))
        for e in every
        if e.WhichOneof("payload") in ("place_agent_triggered", "transition_completed")
    )
    assert set(per_token.values()) == {1}, per_token
    assert len(per_token) == 2 * len(tokens)
    runs = [s for s in sessions if s.metadata.get("schedule") == schedule_name]
    assert sorted(s.metadata["run_number"] for s in runs) == ["1", "2", "3"], "each run once"
    assert sorted(finished.recent_sessions) == sorted(s.name for s in runs)
