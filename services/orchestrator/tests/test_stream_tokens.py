"""Stream tokens: a browser's credential for one session's events, and nothing else."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from agentmesh_common import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from agentmesh_orchestrator.stream_tokens import StreamTokens

from .api_mesh import Mesh, agent, collect, kinds

SECRET = b"0123456789abcdef0123456789abcdef"


def test_a_token_names_its_tenant_and_session_until_it_expires() -> None:
    now = [1_000.0]
    tokens = StreamTokens(SECRET, clock=lambda: now[0])
    token, expires = tokens.issue("acme", "sessions/s1", dt.timedelta(seconds=60))
    assert expires == dt.datetime.fromtimestamp(1_060, dt.UTC)
    grant = tokens.verify(token)
    assert (grant.tenant, grant.session) == ("acme", "sessions/s1")
    grant.check_scope("s1")  # a bare id names the same session
    with pytest.raises(PermissionDenied) as denied:
        grant.check_scope("sessions/s2")
    assert denied.value.reason == "STREAM_TOKEN_SCOPE"
    now[0] = 1_060.0
    with pytest.raises(Unauthenticated) as expired:
        tokens.verify(token)
    assert expired.value.reason == "STREAM_TOKEN_EXPIRED"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature
        lambda t: t.replace("st1.", "st1.x", 1),  # payload
        lambda t: "st1.",
        lambda t: "st1.e30.e30",  # "{}" signed with nothing
    ],
)
def test_a_tampered_or_foreign_token_is_refused(tamper: object) -> None:
    tokens = StreamTokens(SECRET)
    token, _ = tokens.issue("acme", "sessions/s1", dt.timedelta(minutes=1))
    with pytest.raises(Unauthenticated) as caught:
        tokens.verify(tamper(token))  # type: ignore[operator]
    assert caught.value.reason == "STREAM_TOKEN_INVALID"
    other_key = StreamTokens(b"another secret of 32 bytes......")
    with pytest.raises(Unauthenticated):
        other_key.verify(token)


async def test_a_stream_token_streams_its_session_and_nothing_else(mesh: Mesh) -> None:
    async with mesh.client("acme") as acme, mesh.client("globex") as globex:
        created = await acme.create_agent("analyst", agent("analyst"))
        session = await acme.create_session(goal="Say hi", agents=[created.name])
        other = await acme.create_session(goal="Other", agents=[created.name])
        events = await collect(acme.run(session.name))
        issued = await acme.create_stream_token(session.name, ttl_seconds=30)
        assert issued.token.startswith("st1.")
        left = issued.expire_time.ToDatetime(dt.UTC) - dt.datetime.now(dt.UTC)
        assert dt.timedelta(seconds=20) < left <= dt.timedelta(seconds=31)

        async with mesh.raw_client(issued.token) as browser:
            streamed = await collect(browser.events(session.name))
            assert [e.seq for e in streamed] == [e.seq for e in events]
            assert kinds(streamed)[-1] == "session_completed"
            assert (await browser.get_session(session.name)).session.name == session.name
            for refused in (
                collect(browser.events(other.name)),
                browser.get_session(other.name),
                browser.cancel_session(session.name),
                browser.create_stream_token(session.name),
            ):
                with pytest.raises(PermissionDenied):
                    await refused
            with pytest.raises(PermissionDenied):
                [s async for s in browser.list_sessions()]

        # Another tenant cannot get a token for the session, nor learn that it exists.
        with pytest.raises(NotFound):
            await globex.create_stream_token(session.name)
        with pytest.raises(InvalidArgument) as caught:
            await acme.create_stream_token(session.name, ttl_seconds=7200)
        assert caught.value.violations[0].field == "ttl"
        with pytest.raises(InvalidArgument) as caught:
            await acme.create_stream_token("")
        assert caught.value.violations[0].field == "session"


async def test_an_expired_stream_token_is_unauthenticated(mesh: Mesh) -> None:
    async with mesh.client("acme") as acme:
        created = await acme.create_agent("analyst", agent("analyst"))
        session = await acme.create_session(goal="Say hi", agents=[created.name])
        issued = await acme.create_stream_token(session.name, ttl_seconds=1)
        expiry = issued.expire_time.ToDatetime(dt.UTC)
    async with mesh.raw_client(issued.token) as browser:
        assert (await browser.get_session(session.name)).session.name == session.name
        # Wait out the token's own expiry (at most a second), then it is refused.
        await asyncio.sleep((expiry - dt.datetime.now(dt.UTC)).total_seconds() + 0.01)
        with pytest.raises(Unauthenticated) as caught:
            await browser.get_session(session.name)
        assert caught.value.reason == "STREAM_TOKEN_EXPIRED"
