"""The monitoring UI in a real browser: headless Chromium (Debian's package) driven by
Playwright, against every service as a separate process and a scripted model provider.

What a user sees is asserted: signing in, the sessions list updating by itself, a planned
session's timeline growing while an agent streams, the communication graph, the task DAG with a
retried task, usage per agent, the per-agent log, the export and the trace link; cancelling a
running session; deleting a memory entry; the providers' health. Screenshots are saved under
the test's tmp_path (their paths are printed) for a person to look at.

Chromium comes from `make setup` (apt, as root); where it is missing the test fails (it is
never skipped).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from agentmesh.common.v1 import events_pb2
from agentmesh_cli.mesh import MEMORY, create_api_key

from .conftest import Answer, Chat, Mesh, last_user, start_e2e_mesh, stop_e2e_mesh, system_of
from .web import SseEvent, read_sse

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("AGENTMESH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TRACE_TEMPLATE = "http://127.0.0.1:16686/trace/{trace_id}"
PLAN = {
    "rationale": "compute, then explain and check",
    "tasks": [
        {"id": "sum", "description": "Compute 17 * 23 with the calculator"},
        {"id": "explain", "description": "Explain the result", "depends_on": ["sum"]},
        {"id": "check", "description": "Check the result", "depends_on": ["sum"]},
    ],
}
DURATION = re.compile(r"^\d+(\.\d)? (ms|s)$")
EXPLANATION = " ".join(f"word{i}" for i in range(40))
expect.set_options(timeout=20_000)


@dataclass
class Script:
    """The scripted model: a planner, an executor with the calculator, a check that fails
    once (HTTP 500, so the task is retried), a slow explanation, and slow or quick talkers."""

    checks: int = 0

    def __call__(self, chat: Chat) -> Answer:
        system, user = system_of(chat), last_user(chat)
        if "You are a planner" in system:
            return Answer(text=json.dumps(PLAN))
        if "You are a writer" in system:
            return Answer(text="The product is 391, checked and explained.")
        if "Compute 17 * 23" in user:
            if not any(m["role"] == "tool" for m in chat["messages"]):
                return Answer(tool_calls=[("calculator", {"expression": "17 * 23"})])
            return Answer(text="391")
        if "Check the result" in user:
            self.checks += 1
            if self.checks == 1:
                return Answer(status=500)
            return Answer(text="391 is right.")
        if "Explain the result" in user:
            return Answer(text=EXPLANATION, delay_seconds=8)
        if system.startswith("Careful"):
            if not any(m["role"] == "tool" for m in chat["messages"]):
                return Answer(tool_calls=[("calculator", {"expression": "6 * 7"})])
            return Answer(text="It is 42, as approved.")
        if system.startswith("Slow"):
            return Answer(text=" ".join(["slowly"] * 40), delay_seconds=60)
        return Answer(text="Hello from the scribe.")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    started = await start_e2e_mesh(
        Path(tmp_path_factory.mktemp("web-ui")),
        Script(),
        runner=False,
        web={"AGENTMESH_WEB_TRACE_URL_TEMPLATE": TRACE_TEMPLATE},
        orchestrator={"AGENTMESH_ORCHESTRATOR_STREAM_TOKEN_SECRET": "ui-tests-secret-0123456789"},
    )
    try:
        yield started
    finally:
        await stop_e2e_mesh(started)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs it (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class User:
    """One browser tab of one tenant, and that tenant's HTTP client for setting things up."""

    def __init__(self, page: Page, mesh: Mesh, key: str, shots: Path) -> None:
        self.page = page
        self.url = mesh.web_url
        self.key = key
        self.shots = shots
        self.http = aiohttp.ClientSession(
            self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=aiohttp.ClientTimeout(total=90),
        )
        self.errors: list[str] = []
        self.hosts: set[str] = set()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.hosts.add(urlsplit(request.url).netloc))

    async def sign_in(self) -> None:
        await self.page.goto(self.url + "/")
        await self.page.get_by_test_id("api-key-input").fill(self.key)
        await self.page.get_by_test_id("sign-in-button").click()
        await expect(self.page.get_by_test_id("sessions-table")).to_be_visible()

    async def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=path, full_page=True)
        print(f"screenshot: {path}")
        return path

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, path, json=body) as reply:
            assert reply.status == 200, f"{method} {path}: {await reply.text()}"
            return await reply.json()

    async def run(
        self, goal: str, agent: dict[str, Any], strategy: str, **fields: Any
    ) -> tuple[str, Any]:
        """Create a session with `agent` and run it; returns its id and the task reading the
        run's SSE stream to the end (as a client backend would)."""
        agent_id = agent["id"]
        async with self.http.post(
            "/v1/agents", params={"agent_id": agent_id}, json=agent["definition"]
        ) as reply:
            assert reply.status in (200, 409), await reply.text()
        session = {"goal": goal, "agents": [f"agents/{agent_id}"], "strategy": strategy, **fields}
        name = (await self.api("POST", "/v1/sessions", session))["session"]["name"]

        async def read() -> list[SseEvent]:
            async with self.http.post(f"/v1/{name}:run", json={}) as reply:
                return [event async for event in read_sse(reply)]

        return name.split("/", 1)[1], asyncio.create_task(read())

    async def close(self) -> None:
        await self.http.close()
        assert not self.errors, f"the page threw: {self.errors}"
        assert self.hosts <= {urlsplit(self.url).netloc}, f"the page reached {self.hosts}"


@pytest_asyncio.fixture(loop_scope="module")
async def user(mesh: Mesh, browser: Browser, tmp_path: Path) -> AsyncIterator[User]:
    key = await create_api_key(
        mesh.services[MEMORY.name].address, f"ui-{uuid.uuid4().hex[:8]}", "ui tests"
    )
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    shots = tmp_path / "screenshots"
    shots.mkdir()
    signed = User(await context.new_page(), mesh, key, shots)
    try:
        yield signed
    finally:
        await context.close()
        await signed.close()


WORKER = {
    "id": "worker",
    "definition": {
        "type": "AGENT_TYPE_EXECUTOR",
        "model": {"route": "default"},
        "tools": ["calculator"],
    },
}


async def test_a_planned_session_is_watched_live_from_sign_in_to_answer(user: User) -> None:
    page = user.page
    await page.goto(user.url + "/")
    await page.get_by_test_id("api-key-input").fill("amk_not_a_key")
    await page.get_by_test_id("sign-in-button").click()
    await expect(page.get_by_test_id("sign-in-error")).to_contain_text("API_KEY_INVALID")
    await user.shot("01-sign-in-refused")
    await user.sign_in()

    session_id, run = await user.run("What is 17 * 23?", WORKER, "STRATEGY_PLANNER_EXECUTOR")
    row = page.get_by_test_id(f"session-row-{session_id}")
    await expect(row.get_by_test_id("session-status")).to_have_text("running")  # no reload
    await expect(row.get_by_test_id("session-strategy")).to_have_text("planner executor")
    await user.shot("02-sessions-live")
    await row.get_by_test_id("session-link").click()

    # The explanation streams for ~8 s: the page shows it growing, word by word.
    explain = page.locator('[data-testid=timeline-message][data-task="explain"]')
    text = explain.get_by_test_id("message-text")
    await expect(text).to_contain_text("word2")
    await expect(explain).to_have_attribute("data-state", "streaming")
    await expect(page.get_by_test_id("session-status")).to_have_text("running")
    early = await text.inner_text()
    early_count = await _count(page)
    last_word = max(int(n) for n in re.findall(r"word(\d+)", early))
    assert last_word < 36, f"caught mid-stream: {early!r}"
    await user.shot("03-session-streaming")
    await expect(text).to_contain_text(f"word{last_word + 3}")  # more words, same message
    assert await _count(page) > early_count, "the timeline grew"
    await expect(page.get_by_test_id("session-status")).to_have_text("completed", timeout=40_000)
    await expect(text).to_contain_text(EXPLANATION)
    await expect(explain).to_have_attribute("data-state", "done")
    await expect(page.get_by_test_id("final-answer")).to_contain_text("The product is 391")
    events = await run
    assert events[-1].event == "session_completed"

    # The communication graph: planner -> executor -> synthesis, and the tool call.
    graph = page.get_by_test_id("agent-graph")
    for node in ("builtin/planner", "agents/worker", "builtin/synthesis", "tool:calculator"):
        await expect(graph.get_by_test_id(f"graph-node-{node}")).to_be_visible()
    for edge, label in [
        ("builtin/planner->agents/worker", "assigns"),
        ("agents/worker->tool:calculator", "calls"),
        ("agents/worker->builtin/synthesis", "reports to"),
    ]:
        drawn = graph.get_by_test_id(f"graph-edge-{edge}")
        await expect(drawn).to_contain_text(label)
        assert re.fullmatch(r"M[\d.]+,[\d.]+( L[\d.]+,[\d.]+)+", await _path(drawn))

    # The task DAG: dependencies, statuses, the retry of the task that failed once.
    dag = page.get_by_test_id("task-dag")
    for task in ("sum", "explain", "check"):
        await expect(dag.get_by_test_id(f"task-node-{task}")).to_contain_text("completed")
    await expect(dag.get_by_test_id("task-node-check")).to_contain_text("1 retry")
    await expect(dag.get_by_test_id("task-node-explain")).to_contain_text(re.compile(r"\d s"))
    for edge in ("sum->explain", "sum->check"):
        await expect(dag.get_by_test_id(f"task-edge-{edge}")).to_have_count(1)
    await expect(dag.locator("[data-testid^=task-edge-]")).to_have_count(2)
    check_row = page.get_by_test_id("task-row-check")
    await expect(check_row.get_by_test_id("task-retries")).to_have_text("1")
    failed = page.locator("[data-testid=timeline-item][data-kind=task_failed]")
    await expect(failed).to_contain_text("will retry")

    # Usage per agent, from the message events: tokens, cost, latency, time to first token.
    usage = page.get_by_test_id("usage-table")
    for agent in ("agents/worker", "builtin/planner", "builtin/synthesis"):
        row = usage.get_by_test_id(f"usage-row-{agent}")
        assert int((await row.get_by_test_id("usage-total-tokens").inner_text()).replace(",", ""))
        await expect(row.get_by_test_id("usage-cost")).to_have_text(re.compile(r"\$0\.\d+"))
        for timing in ("usage-latency", "usage-ttft"):
            await expect(row.get_by_test_id(timing)).to_have_text(DURATION)
    session = (await user.api("GET", f"/v1/sessions/{session_id}"))["session"]
    await expect(page.get_by_test_id("usage-session-total")).to_contain_text(
        f"{int(session['usage']['totalTokens']):,}"
    )
    await user.shot("04-session-completed")

    # The per-agent log, by clicking the planner in the graph.
    await graph.get_by_test_id("graph-node-builtin/planner").click()
    log = page.get_by_test_id("agent-log")
    await expect(log).to_have_attribute("data-agent", "builtin/planner")
    await expect(log.locator("[data-kind=message_completed]")).to_have_count(1)
    await expect(log.get_by_test_id("agent-log-row")).to_have_count(3)  # started, text, done
    await page.get_by_test_id("agent-log-select").select_option("agents/worker")
    await expect(log).to_have_attribute("data-agent", "agents/worker")
    await expect(log.locator("[data-kind=task_started]")).to_have_count(4)  # check ran twice
    await expect(log.locator("[data-kind=tool_call]")).to_contain_text("calculator")

    # Export: every event as JSON lines, gapless, as the server has them.
    async with page.expect_download() as download_info:
        await page.get_by_test_id("export-button").click()
    download = await download_info.value
    assert download.suggested_filename == f"session-{session_id}.jsonl"
    lines = (await asyncio.to_thread(Path(await download.path()).read_text)).splitlines()
    exported = [json.loads(line) for line in lines]
    assert [int(e["seq"]) for e in exported] == list(range(1, len(events) + 1))
    assert [e.json for e in events] == exported
    trace = exported[0]["traceId"]
    await expect(page.get_by_test_id("trace-link")).to_have_attribute(
        "href", TRACE_TEMPLATE.format(trace_id=trace)
    )
    await expect(page.get_by_test_id("cancel-button")).to_be_disabled()


def _note_token_request(url: str, into: list[str]) -> None:
    if url.endswith(":createStreamToken"):
        into.append(url)


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["stream_token"][0]


async def _take(events: AsyncIterator[SseEvent], count: int) -> AsyncIterator[SseEvent]:
    async for event in events:
        yield event
        count -= 1
        if count == 0:
            return


async def _count(page: Page) -> int:
    """How many events the timeline has taken in (each delta counts)."""
    return int(await page.get_by_test_id("timeline").get_attribute("data-events") or 0)


async def _path(edge: Any) -> str:
    return str(await edge.locator("path").get_attribute("d"))


async def test_cancel_stops_a_running_session(user: User) -> None:
    await user.sign_in()
    slow = {"id": "slowpoke", "definition": {"prompts": {"system": "Slow. Take your time."}}}
    session_id, run = await user.run("Take all day", slow, "STRATEGY_ROUND_ROBIN")
    page = user.page
    # The network misbehaves: the first stream drops after three events, and the browser's
    # own reconnect (with Last-Event-ID) is refused as an expired stream token is (401). The
    # page gets a new token and resumes after seq 3: every event once, in order.
    async with user.http.get(f"/v1/sessions/{session_id}/events") as reply:
        first = [e async for e in _take(read_sse(reply), 3)]
    frames = "".join(f"id: {e.id}\nevent: {e.event}\ndata: {e.data}\n\n" for e in first)
    streams: list[str] = []

    async def misbehave(route: Route) -> None:
        streams.append(route.request.url)
        if len(streams) == 1:
            body = "retry: 100\n\n" + frames  # then the connection ends
            await route.fulfill(status=200, content_type="text/event-stream", body=body)
        elif len(streams) == 2:
            refused = {"code": 16, "status": "UNAUTHENTICATED", "message": "token expired"}
            await route.fulfill(status=401, json=refused)
        else:
            await route.continue_()

    await page.route(re.compile(r"/events\?"), misbehave)
    token_requests: list[str] = []
    page.on("request", lambda r: _note_token_request(r.url, token_requests))
    await page.goto(f"{user.url}/#/sessions/{session_id}")
    message = page.get_by_test_id("timeline-message").first
    await expect(message.get_by_test_id("message-text")).to_contain_text("slowly")
    await expect(page.get_by_test_id("session-status")).to_have_text("running")
    await page.get_by_test_id("cancel-button").click()
    await expect(page.get_by_test_id("session-status")).to_have_text("cancelled")
    await expect(page.get_by_test_id("final-answer")).to_contain_text("cancel_session")
    await expect(message).to_have_attribute("data-state", "cancelled")
    await expect(page.get_by_test_id("cancel-button")).to_be_disabled()
    await user.shot("05-session-cancelled")
    events = await asyncio.wait_for(run, 30)
    assert events[-1].event == "session_cancelled"
    stored = await user.api("GET", f"/v1/sessions/{session_id}")
    assert stored["session"]["status"] == "SESSION_STATUS_CANCELLED"
    assert len(streams) == 3, streams
    first_url, reconnect_url, resumed_url = streams
    # (Chromium adds Last-Event-ID below the layer Playwright intercepts, so it is not seen.)
    assert reconnect_url == first_url, "the browser reconnected by itself first"
    assert "after_seq=3" in resumed_url, "then the page resumed after what it had"
    # (Tokens name tenant, session and expiry second: a new one can equal the old one.)
    assert len(token_requests) == 2, "a new stream token was asked for after the 401"
    assert _token(resumed_url)
    await expect(page.get_by_test_id("timeline")).to_have_attribute("data-events", str(len(events)))
    streamed = "".join(e.json["contentDelta"]["text"] for e in events if e.event == "content_delta")
    await expect(message.get_by_test_id("message-text")).to_have_text(streamed)
    await page.get_by_test_id("nav-sessions").click()
    await page.get_by_test_id("status-filter").select_option("CANCELLED")
    await expect(page.get_by_test_id(f"session-row-{session_id}")).to_be_visible()
    await page.get_by_test_id("status-filter").select_option("COMPLETED")
    await expect(page.get_by_test_id("sessions-empty")).to_be_visible()
    await expect(page.locator("[data-testid^=session-row-]")).to_have_count(0)


async def test_a_tool_call_waiting_for_approval_is_approved_with_a_button(user: User) -> None:
    await user.sign_in()
    careful = {
        "id": "careful",
        "definition": {
            "model": {"route": "default"},
            "prompts": {"system": "Careful. Use the calculator."},
            "tools": ["calculator"],
            "toolApproval": "TOOL_APPROVAL_ALL",
        },
    }
    session_id, run = await user.run(
        "What is 6 * 7?", careful, "STRATEGY_ROUND_ROBIN", limits={"maxRounds": 1}
    )
    page = user.page
    await page.goto(f"{user.url}/#/sessions/{session_id}")
    card = page.get_by_test_id("approval")
    await expect(card).to_contain_text("calculator")
    await expect(card).to_contain_text("6 * 7")
    await expect(page.get_by_test_id("session-status")).to_have_text("running")
    await user.shot("09-approval-waiting")
    await card.get_by_test_id("approval-comment").fill("fine")
    await card.get_by_test_id("approve-button").click()
    await expect(page.get_by_test_id("approvals")).to_have_count(0)
    await expect(page.get_by_test_id("final-answer")).to_contain_text("It is 42, as approved.")
    events = await asyncio.wait_for(run, 30)
    resolved = [
        e.json["approvalResolved"]["approval"] for e in events if e.event == "approval_resolved"
    ]
    assert [(a["state"], a["comment"]) for a in resolved] == [("APPROVAL_STATE_APPROVED", "fine")]
    assert events[-1].event == "session_completed"


async def test_the_ui_listens_to_every_kind_of_session_event() -> None:
    """EventSource delivers a named event only to a listener for that name: the UI's list of
    kinds must be every payload of SessionEvent, or new kinds would be dropped silently."""
    source = (ROOT / "services/web/ui/src/stream.ts").read_text()
    listed = re.search(r"EVENT_KINDS = \[(.*?)\] as const", source, re.S)
    assert listed is not None
    kinds = re.findall(r'"([a-z_]+)"', listed.group(1))
    payload = events_pb2.SessionEvent.DESCRIPTOR.oneofs_by_name["payload"]
    assert sorted(kinds) == sorted(field.name for field in payload.fields)


async def test_memory_entries_are_listed_by_agent_and_type_and_deleted(user: User) -> None:
    scribe = {"id": "scribe", "definition": {"prompts": {"system": "Scribe. Be brief."}}}
    _, run = await user.run("Say hello", scribe, "STRATEGY_ROUND_ROBIN")
    assert (await run)[-1].event == "session_completed"
    base = "/v1/agents/scribe/users"
    for user_id, key, kind, value in [
        ("alice", "colour", "MEMORY_TYPE_LONG_TERM", {"favourite": "blue"}),
        ("bob", "call-back", "MEMORY_TYPE_SHORT_TERM", "tomorrow"),
        ("bob", "met", "MEMORY_TYPE_EPISODIC", "at the launch"),
    ]:
        await user.api(
            "PUT", f"{base}/{user_id}/memories/{key}", {"entry": {"type": kind, "value": value}}
        )
    await user.sign_in()
    page = user.page
    await page.get_by_test_id("nav-memory").click()
    agent = page.get_by_test_id("memory-agent-scribe")
    await expect(agent.locator("[data-testid^=memory-entry-]")).to_have_count(3)
    for kind, count in [("LONG_TERM", 1), ("SHORT_TERM", 1), ("EPISODIC", 1)]:
        group = agent.get_by_test_id(f"memory-type-MEMORY_TYPE_{kind}")
        await expect(group.locator("[data-testid^=memory-entry-]")).to_have_count(count)
    usage = page.get_by_test_id("memory-usage-table").get_by_test_id(
        "agent-usage-row-agents/scribe"
    )
    await expect(usage).to_contain_text("$0.")
    await user.shot("06-memory")

    entry = agent.get_by_test_id("memory-entry-agents/scribe/users/bob/memories/call-back")
    await entry.get_by_test_id("memory-delete").click()
    await entry.get_by_test_id("memory-confirm-delete").click()
    await expect(entry).to_have_count(0)
    await expect(agent.locator("[data-testid^=memory-entry-]")).to_have_count(2)
    async with user.http.get(f"{base}/bob/memories/call-back") as reply:
        assert reply.status == 404, "deleted on the server, not just hidden"
    await page.get_by_test_id("memory-type-filter").select_option("LONG_TERM")
    await expect(agent.locator("[data-testid^=memory-entry-]")).to_have_count(1)
    await expect(agent).to_contain_text("alice")
    await user.shot("07-memory-after-delete")

    await page.get_by_test_id("nav-providers").click()
    providers = (await user.api("GET", "/v1/providers"))["providers"]
    row = page.get_by_test_id("provider-row-scripted")
    scripted = next(p for p in providers if p["deployment"] == "scripted")
    health = scripted["health"].removeprefix("DEPLOYMENT_HEALTH_").lower()
    await expect(row.get_by_test_id("provider-health")).to_have_text(health)
    circuit = scripted["circuitState"].removeprefix("CIRCUIT_STATE_").lower().replace("_", " ")
    await expect(row.get_by_test_id("provider-circuit")).to_have_text(circuit)
    await user.shot("08-providers")


async def test_workflows_show_their_places_with_token_counts_over_http(user: User) -> None:
    """Workflows over the edge's JSON routes (create, tokens, fire, the SSE event stream), and
    the Workflows page: each place with the tokens in it, updated as they move."""
    reviewer = {"id": "reviewer", "definition": {"prompts": {"system": "Scribe. Be brief."}}}
    async with user.http.post(
        "/v1/agents", params={"agent_id": "reviewer"}, json=reviewer["definition"]
    ) as reply:
        assert reply.status in (200, 409), await reply.text()
    workflow = {
        "displayName": "Review desk",
        "places": [{"id": "inbox"}, {"id": "reviewed"}],
        "transitions": [
            {
                "id": "review",
                "fromPlaces": ["inbox"],
                "toPlace": "reviewed",
                "agentExecution": {
                    "agent": "agents/reviewer",
                    "outputMapping": {"data.note": "text"},
                },
            }
        ],
    }
    async with user.http.post(
        "/v1/workflows", params={"workflow_id": "desk"}, json=workflow
    ) as reply:
        assert reply.status == 200, await reply.text()
    tokens = [
        (await user.api("POST", "/v1/workflows/desk/tokens", {"data": {"n": i}}))["token"]["name"]
        for i in range(3)
    ]
    fired = await user.api("POST", f"/v1/{tokens[0]}:fire", {"transition": "review"})
    assert fired["fired"] is True
    assert fired["token"]["data"]["note"] == "Hello from the scribe."
    counts = (await user.api("GET", "/v1/workflows/desk"))["workflow"]["tokenCounts"]
    assert counts == {"inbox": "2", "reviewed": "1"}
    async with user.http.get("/v1/workflows/desk/events", headers={"Last-Event-ID": "3"}) as reply:
        assert reply.status == 200
        replayed = [event async for event in _take(read_sse(reply), 4)]
    assert [(e.id, e.event) for e in replayed] == [
        ("4", "transition_started"),
        ("5", "agent_run"),
        ("6", "transition_completed"),
        ("7", "token_moved"),
    ], "resumed after Last-Event-ID"

    await user.sign_in()
    page = user.page
    await page.get_by_test_id("nav-workflows").click()
    card = page.get_by_test_id("workflow-desk")
    await expect(card).to_contain_text("Review desk")
    await expect(
        card.get_by_test_id("place-desk-inbox").get_by_test_id("token-count")
    ).to_have_text("2")
    await expect(
        card.get_by_test_id("place-desk-reviewed").get_by_test_id("token-count")
    ).to_have_text("1")
    await user.api("POST", f"/v1/{tokens[1]}:fire", {"transition": "review"})
    await expect(
        card.get_by_test_id("place-desk-reviewed").get_by_test_id("token-count")
    ).to_have_text("2", timeout=15_000)
    await user.shot("09-workflows")
