"""The TypeScript client in a real browser: headless Chromium (Debian's package) driven by
Playwright loads a page that imports the client's browser bundle
(`clients/typescript/dist/agentmesh-client.browser.js`, built by `npm run build`) and calls the
mesh through the web edge over gRPC-web, every service a separate process and the scripted
provider answering.

The page is served from its own origin (a small server on port 0), so every call is a real
cross-origin request: CORS preflights, exposed grpc-status headers. In the page: a session is
created, run to its end and seen whole once; replayed after a seq; bogus and bad requests are
typed errors with their reasons and field violations; a deadline and an AbortSignal end a
stream as DeadlineExceeded and Cancelled; a connection cut mid-run (a TCP proxy resets it) is
resumed with StreamSession after the last seq, every event once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from .test_web_ui import CHROMIUM, CHROMIUM_ARGS
from .web import WebMesh, start_web_mesh, stop_web_mesh

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
BUNDLE = CLIENT / "dist" / "agentmesh-client.browser.js"

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>agentmesh browser client</title>
<script type="module">
  import * as agentmesh from "/agentmesh-client.browser.js";
  window.agentmesh = agentmesh;
  document.title = "ready";
</script>
"""

# Helpers the page gets once: a client for the key, a round-robin session, an error's shape.
HELPERS = """
window.t = {
  client: (baseUrl, apiKey) => agentmesh.createBrowserClient({ baseUrl, apiKey }),
  async session(mesh, system, maxRounds = 1) {
    const { session } = await mesh.createSession({
      session: {
        goal: "Say hello",
        strategy: agentmesh.Strategy.ROUND_ROBIN,
        limits: { maxRounds },
        inlineAgents: [{ name: "greeter", type: agentmesh.AgentType.CUSTOM,
                         model: { route: "default" }, prompts: { system } }],
      },
    });
    return session.name;
  },
  async collect(events) {
    const seen = [];
    for await (const event of events) {
      seen.push({ seq: Number(event.seq), kind: event.payload.case });
    }
    return seen;
  },
  error(e) {
    return {
      isAgentmeshError: e instanceof agentmesh.AgentmeshError,
      cls: e.constructor.name, code: e.codeName, reason: e.reason,
      fields: (e.fieldViolations ?? []).map((v) => v.field),
    };
  },
};
"""


@pytest.fixture(scope="module")
def bundle() -> bytes:
    """The browser bundle, built from the current sources as `make setup` builds it."""
    built = subprocess.run(
        ["npm", "run", "--silent", "build"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return BUNDLE.read_bytes()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def page_origin(bundle: bytes) -> AsyncIterator[str]:
    """A static server of the test page and the bundle, on its own origin."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def script(_: web.Request) -> web.Response:
        return web.Response(body=bundle, content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/agentmesh-client.browser.js", script)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def web_mesh(
    tmp_path_factory: pytest.TempPathFactory, page_origin: str
) -> AsyncIterator[WebMesh]:
    started = await start_web_mesh(
        Path(tmp_path_factory.mktemp("web-browser-client")),
        AGENTMESH_WEB_CORS_ALLOWED_ORIGINS=page_origin,
    )
    try:
        yield started
    finally:
        await stop_web_mesh(started)


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


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, page_origin: str, web_mesh: WebMesh) -> AsyncIterator[Page]:
    context = await browser.new_context()
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    try:
        await opened.goto(page_origin)
        await opened.wait_for_function("document.title === 'ready'", timeout=20_000)
        await opened.evaluate(HELPERS)
        yield opened
        assert problems == [], problems
    finally:
        await context.close()


async def in_page(page: Page, script: str, *args: Any) -> Any:
    """Run `async (agentmesh, t, ...args) => …` in the page and return its (JSON) result."""
    return await page.evaluate(
        f"(args) => ({script})(window.agentmesh, window.t, ...args)", list(args)
    )


async def test_a_session_runs_to_its_end_and_replays_after_a_seq(
    page: Page, web_mesh: WebMesh
) -> None:
    key = await web_mesh.tenant()
    result = await in_page(
        page,
        """async (agentmesh, t, url, key) => {
          const mesh = t.client(url, key);
          const name = await t.session(mesh, "Greeter. Be brief.");
          const run = await t.collect(mesh.run(name));
          const replay = await t.collect(mesh.events(name, { afterSeq: 2 }));
          const { session } = await mesh.getSession({ name });
          return { name, run, replay, status: agentmesh.SessionStatus[session.status],
                   answer: session.finalAnswer };
        }""",
        web_mesh.url,
        key,
    )
    run = result["run"]
    assert [event["seq"] for event in run] == list(range(1, len(run) + 1))
    assert len(run) >= 4
    assert run[0]["kind"] == "sessionStarted"
    assert run[-1]["kind"] == "sessionCompleted"
    assert result["replay"] == run[2:]
    assert result["status"] == "COMPLETED"
    assert result["answer"] == "Hello from Greeter."


async def test_errors_are_typed_with_their_reason_and_fields(page: Page, web_mesh: WebMesh) -> None:
    key = await web_mesh.tenant()
    result = await in_page(
        page,
        """async (agentmesh, t, url, key) => {
          const mesh = t.client(url, key);
          const out = {};
          try { await mesh.getSession({ name: "sessions/bogus" }); }
          catch (e) {
            out.missing = { ...t.error(e), notFound: e instanceof agentmesh.NotFound };
          }
          try { await mesh.createSession({ session: { goal: "" } }); }
          catch (e) {
            out.invalid = { ...t.error(e), typed: e instanceof agentmesh.InvalidArgument };
          }
          try { await t.collect(mesh.events("sessions/bogus")); }
          catch (e) { out.stream = t.error(e); }
          try { await t.client(url, "not-a-key").listAgents({}); }
          catch (e) { out.anonymous = t.error(e); }
          return out;
        }""",
        web_mesh.url,
        key,
    )
    assert result["missing"] == {
        "isAgentmeshError": True,
        "cls": "NotFound",
        "code": "NOT_FOUND",
        "reason": "SESSION_NOT_FOUND",
        "fields": [],
        "notFound": True,
    }
    assert result["invalid"]["typed"] is True
    assert result["invalid"]["code"] == "INVALID_ARGUMENT"
    assert "session.goal" in result["invalid"]["fields"]
    assert result["stream"]["code"] == "NOT_FOUND"
    assert result["stream"]["reason"] == "SESSION_NOT_FOUND"
    assert result["anonymous"]["code"] == "UNAUTHENTICATED"


async def test_a_deadline_and_an_abort_signal_end_streams(page: Page, web_mesh: WebMesh) -> None:
    key = await web_mesh.tenant()
    result = await in_page(
        page,
        """async (agentmesh, t, url, key) => {
          const mesh = t.client(url, key);
          const out = {};
          const idle = await t.session(mesh, "Greeter."); // never run: no events come
          const started = Date.now();
          try { await t.collect(mesh.events(idle, { timeoutMs: 700 })); out.deadline = "ended"; }
          catch (e) { out.deadline = t.error(e); out.deadlineMs = Date.now() - started; }
          const slow = await t.session(mesh, "Slow talker.");
          const controller = new AbortController();
          const seen = [];
          try {
            for await (const event of mesh.run(slow, { signal: controller.signal })) {
              seen.push(Number(event.seq));
              controller.abort();
            }
            out.aborted = "ended";
          } catch (e) { out.aborted = t.error(e); }
          out.seen = seen;
          return out;
        }""",
        web_mesh.url,
        key,
    )
    assert result["deadline"]["code"] == "DEADLINE_EXCEEDED", result
    assert result["deadlineMs"] < 10_000
    assert result["aborted"]["code"] == "CANCELLED", result
    assert result["seen"] == [1]


class CuttingProxy:
    """A TCP proxy to the web edge that can cut every open connection at once, as a network
    drop would (the browser's own offline switch leaves open streams alone)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self._target = (host, int(port))
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._open |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}

    def cut(self) -> int:
        """Reset every open connection; returns how many there were."""
        count = len(self._open)
        for writer in list(self._open):
            writer.transport.abort()
        return count

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_dropped_connection_is_resumed_after_the_last_seq(
    page: Page, web_mesh: WebMesh
) -> None:
    key = await web_mesh.tenant()
    proxy = CuttingProxy(web_mesh.url)
    await proxy.start()
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url.rsplit("/", 1)[-1]))
    try:
        await in_page(
            page,
            """async (agentmesh, t, url, key) => {
              const mesh = t.client(url, key);
              const name = await t.session(mesh, "Slow talker.", 3);
              window.drop = { seen: [] };
              (async () => {
                for await (const event of mesh.run(name)) {
                  window.drop.seen.push({ seq: Number(event.seq), kind: event.payload.case });
                }
              })().then(() => { window.drop.done = true; },
                        (e) => { window.drop.error = t.error(e); });
            }""",
            proxy.url,
            key,
        )
        await page.wait_for_function("window.drop.seen.length >= 2", timeout=30_000)
        assert proxy.cut() >= 2, "the stream's connection (both sides) was open"
        await page.wait_for_function(
            "window.drop.done === true || window.drop.error !== undefined", timeout=60_000
        )
    finally:
        await proxy.close()
    result = await page.evaluate("window.drop")
    assert "error" not in result, result
    seqs = [event["seq"] for event in result["seen"]]
    assert seqs == list(range(1, len(seqs) + 1)), "every event once, in order"
    assert result["seen"][-1]["kind"] == "sessionCompleted"
    assert sent.count("Run") == 1
    assert "StreamSession" in sent, "the client resumed with StreamSession"
