"""Session event streams through the web edge, every service a separate process: SSE (resumed
with Last-Event-ID after a dropped connection), NDJSON, WebSocket, stream tokens, and the
cut-off of a client that reads too slowly."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from agentmesh_cli.mesh import WEB, ServiceProcess

from .web import SseEvent, WebMesh, read_sse, start_web_mesh, stop_web_mesh

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

TERMINAL = {"session_completed", "session_failed", "session_cancelled"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WebMesh]:
    started = await start_web_mesh(Path(tmp_path_factory.mktemp("web-streams")))
    try:
        yield started
    finally:
        await stop_web_mesh(started)


async def new_session(
    http: aiohttp.ClientSession, system: str, goal: str = "Talk", rounds: int = 1
) -> str:
    agent = {"model": {"route": "default"}, "prompts": {"system": system}}
    agent_id = system.split(".")[0].lower()
    async with http.post("/v1/agents", params={"agent_id": agent_id}, json=agent) as reply:
        assert reply.status in (200, 409), await reply.text()
    async with http.post(
        "/v1/sessions",
        json={"goal": goal, "agents": [f"agents/{agent_id}"], "limits": {"maxRounds": rounds}},
    ) as reply:
        assert reply.status == 200, await reply.text()
        return str((await reply.json())["session"]["name"])


async def sse(http: aiohttp.ClientSession, path: str, **kwargs: Any) -> list[SseEvent]:
    async with http.request(kwargs.pop("method", "GET"), path, **kwargs) as reply:
        assert reply.status == 200, await reply.text()
        assert reply.headers["Content-Type"] == "text/event-stream"
        return [event async for event in read_sse(reply)]


async def test_run_streams_sse_with_seq_ids_and_payload_kinds(web: WebMesh) -> None:
    async with web.session(await web.tenant()) as http:
        name = await new_session(http, "Greeter. Be brief.")
        events = await sse(http, f"/v1/{name}:run", method="POST", json={})
    seqs = [int(e.id or 0) for e in events]
    assert seqs == list(range(1, len(events) + 1)), "ids are the gapless seqs"
    assert [int(e.json["seq"]) for e in events] == seqs
    assert events[0].event == "session_started"
    assert events[-1].event == "session_completed"
    assert all(_camel(e.event) in e.json for e in events), "event: names the payload"
    assert events[-1].json["sessionCompleted"]["finalAnswer"] == "Hello from Greeter."


async def test_a_dropped_sse_stream_resumes_with_last_event_id_exactly_once(
    web: WebMesh,
) -> None:
    async with web.session(await web.tenant()) as http:
        name = await new_session(http, "Slow. Take your time.")
        async with http.post(f"/v1/{name}:run", json={}) as running:  # start it, then leave
            first = [e async for e in _take(read_sse(running), 3)]
        assert [e.id for e in first] == ["1", "2", "3"]
        seen = list(first)
        # Reconnect as an EventSource does, after each of two more drops.
        for _ in range(2):
            headers = {"Last-Event-ID": seen[-1].id or ""}
            async with http.get(f"/v1/{name}/events", headers=headers) as reply:
                assert reply.status == 200
                seen += [e async for e in _take(read_sse(reply), 2)]
        async with http.get(
            f"/v1/{name}/events", headers={"Last-Event-ID": seen[-1].id or ""}
        ) as r:
            seen += [e async for e in read_sse(r)]
        everything = await sse(http, f"/v1/{name}/events", params={"after_seq": "0"})
    assert [e.id for e in seen] == [e.id for e in everything], "every event once, in order"
    assert [e.data for e in seen] == [e.data for e in everything]
    assert seen[-1].event in TERMINAL
    async with (
        web.session(await web.tenant()) as other,
        other.get(f"/v1/{name}/events") as reply,
    ):
        assert reply.status == 404, "another tenant cannot stream it"


async def test_after_the_terminal_event_a_reconnect_is_told_to_stop(web: WebMesh) -> None:
    async with web.session(await web.tenant()) as http:
        name = await new_session(http, "Greeter. Be brief.")
        events = await sse(http, f"/v1/{name}:run", method="POST", json={})
        headers = {"Last-Event-ID": events[-1].id or ""}
        async with http.get(f"/v1/{name}/events", headers=headers) as reply:
            assert reply.status == 204  # EventSource stops reconnecting
        async with http.get(f"/v1/{name}/events", headers={"Last-Event-ID": "x"}) as reply:
            assert reply.status == 400


async def test_ndjson_and_websocket_carry_the_same_events(web: WebMesh) -> None:
    key = await web.tenant()
    async with web.session(key) as http:
        name = await new_session(http, "Greeter. Be brief.")
        over_sse = await sse(http, f"/v1/{name}:run", method="POST", json={})
        async with http.get(
            f"/v1/{name}/events", headers={"Accept": "application/x-ndjson"}
        ) as reply:
            assert reply.headers["Content-Type"] == "application/x-ndjson"
            lines = [json.loads(line) async for line in reply.content if line.strip()]
        async with http.ws_connect(f"/v1/{name}/events") as ws:
            over_ws = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            assert ws.close_code == 1000
    assert lines == [e.json for e in over_sse]
    assert over_ws == [e.json for e in over_sse]


async def test_execute_runs_and_streams_in_one_request(web: WebMesh) -> None:
    async with web.session(await web.tenant()) as http:
        await new_session(http, "Helper. Answer.")
        body = {
            "task": "Say hello",
            "agents": ["agents/helper"],
            "mode": "EXECUTION_MODE_SEQUENTIAL",
        }
        events = await sse(http, "/v1/sessions:execute", method="POST", json=body)
    assert events[0].event == "session_started"
    assert events[-1].json["sessionCompleted"]["finalAnswer"] == "Hello from Helper."


async def test_cancel_over_http_ends_a_streamed_run(web: WebMesh) -> None:
    async with web.session(await web.tenant()) as http:
        name = await new_session(http, "Slow. Take your time.")
        async with http.post(f"/v1/{name}:run", json={}) as running:
            events = read_sse(running)
            first = await anext(events)
            assert first.event == "session_started"
            async with http.post(f"/v1/{name}:cancel", json={}) as reply:
                assert reply.status == 200, await reply.text()
            rest = [e async for e in events]
    assert rest[-1].event == "session_cancelled"


async def test_stream_tokens_let_a_browser_stream_one_session_only(web: WebMesh) -> None:
    key = await web.tenant()
    async with web.session(key) as http:
        name = await new_session(http, "Greeter. Be brief.")
        other = await new_session(http, "Helper. Answer.")
        await sse(http, f"/v1/{name}:run", method="POST", json={})
        async with http.post(f"/v1/{name}:createStreamToken", json={"ttl": "60s"}) as reply:
            assert reply.status == 200, await reply.text()
            token = (await reply.json())["token"]
        async with http.post(f"/v1/{name}:createStreamToken", json={"ttl": "1s"}) as reply:
            short = await reply.json()
    async with web.session() as browser:  # no Authorization header, as an EventSource
        events = await sse(browser, f"/v1/{name}/events", params={"stream_token": token})
        assert events[-1].event == "session_completed"
        async with browser.ws_connect(f"/v1/{name}/events?stream_token={token}") as ws:
            messages = [m async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
        assert len(messages) == len(events)
        for path in (f"/v1/{other}/events", f"/v1/{other}", "/v1/sessions"):
            async with browser.get(path, params={"stream_token": token}) as reply:
                assert reply.status == 403, path
                assert (await reply.json())["details"][0]["reason"] == "STREAM_TOKEN_SCOPE"
        async with browser.get(f"/v1/{name}", params={"stream_token": "st1.forged.sig"}) as reply:
            assert reply.status == 401
            assert (await reply.json())["details"][0]["reason"] == "STREAM_TOKEN_INVALID"
        # Wait out the short token's own expiry (at most a second).
        await asyncio.sleep(max(0.0, _expire_time(short["expireTime"]) - time.time()) + 0.05)
        async with browser.get(
            f"/v1/{name}/events", params={"stream_token": short["token"]}
        ) as reply:
            assert reply.status == 401
            assert (await reply.json())["details"][0]["reason"] == "STREAM_TOKEN_EXPIRED"
    async with (
        web.session(await web.tenant()) as stranger,
        stranger.post(f"/v1/{name}:createStreamToken", json={}) as reply,
    ):
        assert reply.status == 404, "another tenant gets no token for it, nor learns it exists"


async def test_a_client_that_reads_too_slowly_is_cut_off_and_resumes(web: WebMesh) -> None:
    key = await web.tenant()
    async with web.session(key) as http:
        # 60 turns of about 100 KB: more than the kernel's socket buffers (4 MB at most for
        # the edge's send side here), the transport's 64 KB and the edge's 64 KB hold.
        name = await new_session(http, "Long. Write a lot.", rounds=60)
        everything = await sse(http, f"/v1/{name}:run", method="POST", json={})
    assert everything[-1].event == "session_completed"
    assert sum(len(e.data) for e in everything) > 5_000_000
    cut_before = await web.metric("agentmesh_web_slow_consumers_total")
    host, port = web.url.removeprefix("http://").split(":")
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, unread
    reader.connect((host, int(port)))
    reader.sendall(
        f"GET /v1/{name}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    deadline = time.monotonic() + 60
    while await web.metric("agentmesh_web_slow_consumers_total") <= cut_before:
        assert time.monotonic() < deadline, "the edge never cut the slow client off"
        await asyncio.sleep(0.2)
    raw = await asyncio.to_thread(_read_all, reader)
    body = raw.split(b"\r\n\r\n", 1)[1]
    frames = [f for f in _dechunk(body).decode().split("\n\n") if f.strip()]
    *delivered, cut = frames
    assert cut.startswith("event: stream_error")
    error = json.loads(cut.split("data: ", 1)[1])
    assert error["details"][0]["reason"] == "SLOW_CONSUMER"
    after = int(error["details"][0]["metadata"]["after_seq"])
    ids = [int(f.split("\n", 1)[0].removeprefix("id: ")) for f in delivered]
    assert ids == list(range(1, after + 1)), "everything queued was delivered, in order"
    assert after < len(everything), "the stream was cut before its end"
    async with web.session(key) as http:
        rest = await sse(http, f"/v1/{name}/events", headers={"Last-Event-ID": str(after)})
    assert [int(e.id or 0) for e in rest] == list(range(after + 1, len(everything) + 1))


def _camel(name: str) -> str:
    head, *tail = name.split("_")
    return head + "".join(part.title() for part in tail)


async def _take(events: AsyncIterator[SseEvent], count: int) -> AsyncIterator[SseEvent]:
    """The first `count` events, then stop reading (the caller drops the connection)."""
    taken = 0
    async for event in events:
        yield event
        taken += 1
        if taken == count:
            return


def _expire_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


async def test_a_stopping_edge_ends_its_streams_and_another_replica_resumes_them(
    web: WebMesh, tmp_path: Path
) -> None:
    env = {
        "AGENTMESH_WEB_PORT": "0",
        "AGENTMESH_WEB_METRICS_PORT": "0",
        "AGENTMESH_WEB_HTTP_PORT": "0",
        "AGENTMESH_WEB_GRACE_SECONDS": "3",
        "AGENTMESH_WEB_ORCHESTRATOR_TARGET": web.mesh.orchestrator.address,
    }
    replica = ServiceProcess(WEB, env, log_path=tmp_path / "web-b.log")
    await replica.start()
    try:
        key = await web.tenant()
        async with web.session(key) as http:
            name = await new_session(http, "Slow. Take your time.", rounds=4)
            async with http.post(f"/v1/{name}:run", json={}) as reply:
                assert reply.status == 200  # started on the module's edge, left running
                first = [e async for e in _take(read_sse(reply), 1)]
        async with (
            aiohttp.ClientSession(
                replica.http_url, headers={"Authorization": f"Bearer {key}"}
            ) as b,
            b.get(f"/v1/{name}/events", params={"after_seq": "1"}) as reply,
        ):
            events = read_sse(reply)
            seen = [*first, await anext(events)]
            assert replica.process is not None
            started = time.monotonic()
            replica.process.terminate()  # SIGTERM while the stream is open
            seen += [e async for e in events]  # ends without the terminal event
            code = await asyncio.wait_for(replica.process.wait(), 15)
        assert code == 0
        assert time.monotonic() - started < 3 + 5, "within the grace period"
        assert seen[-1].event not in TERMINAL, "the stream was ended, not the session"
        async with web.session(key) as http:  # the client resumes on the other replica
            headers = {"Last-Event-ID": seen[-1].id or ""}
            seen += await sse(http, f"/v1/{name}/events", headers=headers)
            everything = await sse(http, f"/v1/{name}/events")
        assert [e.id for e in seen] == [e.id for e in everything]
        assert seen[-1].event == "session_completed"
    finally:
        await replica.stop()
