"""The public API as HTTP/JSON through the web edge, every service a separate process:
the google.api.http mapping, canonical JSON, the one error body, auth, CORS and limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from .web import WebMesh, start_web_mesh, stop_web_mesh

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WebMesh]:
    started = await start_web_mesh(Path(tmp_path_factory.mktemp("web-api")))
    try:
        yield started
    finally:
        await stop_web_mesh(started)


AGENT = {
    "type": "AGENT_TYPE_CUSTOM",
    "model": {"route": "default"},
    "prompts": {"system": "Analyst. Be brief."},
}


async def test_agents_round_trip_as_json_by_the_http_rules(web: WebMesh) -> None:
    key = await web.tenant()
    async with web.session(key) as http:
        async with http.post("/v1/agents", params={"agent_id": "analyst"}, json=AGENT) as reply:
            assert reply.status == 200, await reply.text()
            created = await reply.json()
        assert created["agent"]["name"] == "agents/analyst"
        assert created["agent"]["type"] == "AGENT_TYPE_CUSTOM"  # enums by name
        async with http.get("/v1/agents/analyst") as reply:
            assert (await reply.json())["agent"]["prompts"]["system"] == "Analyst. Be brief."
        patch = {"description": "Reads numbers."}
        async with http.patch(
            "/v1/agents/analyst", params={"update_mask": "description"}, json=patch
        ) as reply:
            assert reply.status == 200, await reply.text()
            assert (await reply.json())["agent"]["description"] == "Reads numbers."
        async with http.get("/v1/agents", params={"page_size": "10"}) as reply:
            names = [a["name"] for a in (await reply.json())["agents"]]
        assert names == ["agents/analyst"]
        async with http.delete("/v1/agents/analyst") as reply:
            assert reply.status == 200
            assert await reply.json() == {}
        async with http.get("/v1/agents/analyst") as reply:
            assert reply.status == 404
            body = await reply.json()
        assert body["status"] == "NOT_FOUND"
        assert body["details"][0]["reason"] == "AGENT_NOT_FOUND"


async def test_a_session_is_created_run_and_read_back(web: WebMesh) -> None:
    key = await web.tenant()
    async with web.session(key) as http:
        await http.post("/v1/agents", params={"agent_id": "greeter"}, json=AGENT)
        session = {"goal": "Say hello", "agents": ["agents/greeter"]}
        async with http.post("/v1/sessions", json=session) as reply:
            name = (await reply.json())["session"]["name"]
        async with http.post(f"/v1/{name}:run", json={}) as reply:
            assert reply.headers["Content-Type"] == "text/event-stream"
            await reply.read()
        async with http.get(f"/v1/{name}") as reply:
            got = await reply.json()
        assert got["session"]["status"] == "SESSION_STATUS_COMPLETED"
        assert got["session"]["finalAnswer"] == "Hello from Analyst."
        async with http.get("/v1/sessions", params={"status": "SESSION_STATUS_COMPLETED"}) as r:
            assert [s["name"] for s in (await r.json())["sessions"]] == [name]
        async with http.get("/v1/usage", params={"session": name}) as reply:
            usage = await reply.json()
        assert int(usage["total"]["totalTokens"]) > 0  # int64 as a string, canonically


async def test_bad_json_names_the_field_and_stores_nothing(web: WebMesh) -> None:
    key = await web.tenant()
    async with web.session(key) as http:
        cases = [
            (b'{"goal": "x", ', "body", "is not JSON"),
            (b'{"goal": "x", "limits": {"maxRounds": "many"}}', "session.limits.maxRounds", ""),
            (b'{"goal": "x", "colour": "red"}', "session.colour", "unknown field"),
            (b'{"goal": "x", "strategy": "STRATEGY_NOPE"}', "session.strategy", ""),
            (b'{"goal": "' + b"\xff" + b'"}', "body", "UTF-8"),
            (b"[" * 30_000 + b"]" * 30_000, "body", "nested too deeply"),
        ]
        for body, field, words in cases:
            async with http.post(
                "/v1/sessions", data=body, headers={"Content-Type": "application/json"}
            ) as reply:
                assert reply.status == 400, (body[:40], await reply.text())
                error = await reply.json()
            assert error["code"] == 3
            assert error["status"] == "INVALID_ARGUMENT"
            violation = next(d for d in error["details"] if "fieldViolations" in d)
            assert violation["fieldViolations"][0]["field"] == field, error
            assert words in violation["fieldViolations"][0]["description"]
        async with http.get("/v1/sessions", params={"page_size": "many"}) as reply:
            assert reply.status == 400
            error = await reply.json()
        assert error["details"][1]["fieldViolations"][0]["field"] == "page_size"
        async with http.get("/v1/sessions", params={"colour": "red"}) as reply:
            assert (await reply.json())["details"][1]["fieldViolations"][0]["field"] == "colour"
        async with http.get("/v1/sessions") as reply:
            assert (await reply.json()).get("sessions", []) == [], "nothing half-created"


async def test_edge_failures_use_the_same_error_body(web: WebMesh) -> None:
    key = await web.tenant()
    async with web.session(key) as http:
        async with http.get("/v1/nowhere") as reply:
            assert reply.status == 404
            assert (await reply.json())["details"][0]["reason"] == "NO_ROUTE"
        async with http.get("/definitely/not/here") as reply:
            assert reply.status == 404
            assert (await reply.json())["status"] == "NOT_FOUND"
        async with http.delete("/v1/sessions") as reply:
            assert reply.status == 405
            assert reply.headers["Allow"] == "GET, POST"
            assert (await reply.json())["details"][0]["reason"] == "METHOD_NOT_ALLOWED"
        big = {"goal": "x" * 70_000}
        async with http.post("/v1/sessions", json=big) as reply:
            assert reply.status == 413
            assert (await reply.json())["details"][0]["reason"] == "REQUEST_TOO_LARGE"


async def test_credentials_are_required_and_checked(web: WebMesh) -> None:
    async with web.session() as anonymous, anonymous.get("/v1/sessions") as reply:
        assert reply.status == 401
        assert (await reply.json())["details"][0]["reason"] == "API_KEY_MISSING"
    async with web.session("amk_not_a_key") as wrong, wrong.get("/v1/sessions") as reply:
        assert reply.status == 401
        assert (await reply.json())["details"][0]["reason"] == "API_KEY_INVALID"
    key = await web.tenant()
    async with (
        web.session(**{"X-API-Key": key}) as by_header,
        by_header.get("/v1/tools") as reply,
    ):
        assert reply.status == 200
        assert any(t["spec"]["name"] == "calculator" for t in (await reply.json())["tools"])


async def test_tenants_do_not_see_each_other_over_http(web: WebMesh) -> None:
    acme, globex = await web.tenant(), await web.tenant()
    async with web.session(acme) as http:
        await http.post("/v1/agents", params={"agent_id": "secret"}, json=AGENT)
    async with web.session(globex) as http, http.get("/v1/agents/secret") as reply:
        assert reply.status == 404


async def test_the_tenant_request_limit_is_429_with_retry_after(web: WebMesh) -> None:
    key = await web.tenant()
    async with web.session(key) as http:
        statuses = []
        for _ in range(125):  # the orchestrator allows 120 requests a minute per tenant
            async with http.get("/v1/models") as reply:
                statuses.append(reply.status)
                if reply.status == 429:
                    assert int(reply.headers["Retry-After"]) >= 1
                    body = await reply.json()
                    break
        assert statuses[-1] == 429
        assert set(statuses[:-1]) == {200}
        assert body["details"][0]["reason"] == "TENANT_RATE_LIMITED"
        retry = next(d for d in body["details"] if d["@type"].endswith("RetryInfo"))
        assert retry["retryDelay"].endswith("s")


async def test_cors_admits_the_allow_list_only(web: WebMesh) -> None:
    key = await web.tenant()
    allowed = {"Origin": "https://app.example.com"}
    async with web.session() as http:
        preflight = {
            **allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with http.options("/v1/sessions", headers=preflight) as reply:
            assert reply.status == 204
            assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert "authorization" in reply.headers["Access-Control-Allow-Headers"]
        headers = {**allowed, "Authorization": f"Bearer {key}"}
        async with http.get("/v1/sessions", headers=headers) as reply:
            assert reply.status == 200
            assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
            assert "retry-after" in reply.headers["Access-Control-Expose-Headers"]
        foreign = {"Origin": "https://evil.example.net", "Authorization": f"Bearer {key}"}
        async with http.get("/v1/sessions", headers=foreign) as reply:
            assert reply.status == 403
            assert "Access-Control-Allow-Origin" not in reply.headers
            assert (await reply.json())["details"][0]["reason"] == "CORS_ORIGIN_NOT_ALLOWED"
        same_origin = {"Origin": web.url, "Authorization": f"Bearer {key}"}
        async with http.post("/v1/sessions", headers=same_origin, json={}) as reply:
            assert reply.status == 400  # served (and refused by the orchestrator), not by CORS
            assert "Access-Control-Allow-Origin" not in reply.headers


async def test_health_and_the_ui_are_served(web: WebMesh) -> None:
    async with web.session() as http:
        async with http.get("/healthz") as reply:
            assert (reply.status, await reply.json()) == (200, {"status": "SERVING"})
        async with http.get("/readyz") as reply:
            assert (reply.status, await reply.json()) == (200, {"status": "SERVING"})
        async with http.get("/") as reply:
            assert reply.status == 200
            assert "text/html" in reply.headers["Content-Type"]
        async with http.get("/ui/config.json") as reply:
            assert await reply.json() == {"traceUrlTemplate": None}


async def test_a_callers_trace_context_reaches_the_orchestrator(web: WebMesh) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    key = await web.tenant()
    async with web.session(key) as http:
        await http.post("/v1/agents", params={"agent_id": "tracer"}, json=AGENT)
        async with http.post(
            "/v1/sessions", json={"goal": "Say hello", "agents": ["agents/tracer"]}
        ) as reply:
            name = (await reply.json())["session"]["name"]
        traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
        async with http.post(
            f"/v1/{name}:run", json={}, headers={"traceparent": traceparent}
        ) as reply:
            text = await reply.text()
    assert f'"traceId":"{trace_id}"' in text, "the run's events carry the caller's trace"
