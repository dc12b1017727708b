"""The public API as gRPC-web through the web edge, every service a separate process, spoken
by a plain HTTP client (httpx) that frames the bytes by hand: what a browser's connect-web or
grpc-web transport sends and must get back (frames, trailers, rich error details, CORS)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import struct
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import pytest_asyncio
from google.protobuf import message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh.common.v1 import agents_pb2, sessions_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2

from .test_web_streams import _dechunk, _read_all
from .web import WebMesh, start_web_mesh, stop_web_mesh

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

SERVICE = "/agentmesh.orchestrator.v1.OrchestratorService"
GRPC_WEB = "application/grpc-web+proto"
ORIGIN = "https://app.example.com"
M = TypeVar("M", bound=message.Message)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WebMesh]:
    started = await start_web_mesh(Path(tmp_path_factory.mktemp("web-grpcweb")))
    try:
        yield started
    finally:
        await stop_web_mesh(started)


def frame(payload: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


@dataclass
class Reply:
    """A gRPC-web response: its HTTP parts, the message frames and the trailers."""

    http: httpx.Response
    messages: list[bytes]
    trailers: dict[str, str]
    trailers_only: bool

    @property
    def code(self) -> int:
        return int(self.trailers["grpc-status"])

    @property
    def message(self) -> str:
        return urllib.parse.unquote(self.trailers.get("grpc-message", ""))

    @property
    def status(self) -> status_pb2.Status:
        raw = self.trailers["grpc-status-details-bin"]
        return status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))

    @property
    def reason(self) -> str:
        info = error_details_pb2.ErrorInfo()
        assert any(detail.Unpack(info) for detail in self.status.details), self.status
        return info.reason

    def replies(self, kind: type[M]) -> list[M]:
        return [kind.FromString(payload) for payload in self.messages]


def parse(http: httpx.Response) -> Reply:
    body = http.content
    if http.headers.get("content-type", "").startswith("application/grpc-web-text"):
        # Each chunk is its own padded base64 (as Envoy writes it): decode them one by one.
        body = b"".join(map(base64.b64decode, re.findall(rb"[A-Za-z0-9+/]+={0,2}", body)))
    if "grpc-status" in http.headers:
        assert body == b"", "a trailers-only reply has no body"
        fields = {k: v for k, v in http.headers.items() if k.startswith("grpc-")}
        return Reply(http, [], fields, trailers_only=True)
    messages: list[bytes] = []
    trailers: dict[str, str] | None = None
    position = 0
    while position < len(body):
        assert trailers is None, "nothing may follow the trailer frame"
        flag, length = struct.unpack_from(">BI", body, position)
        payload = body[position + 5 : position + 5 + length]
        assert len(payload) == length, "a truncated frame"
        position += 5 + length
        if flag & 0x80:
            lines = payload.decode("ascii").strip().split("\r\n")
            trailers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        else:
            assert flag == 0
            messages.append(payload)
    assert trailers is not None, f"the stream ended without trailers: {body!r}"
    return Reply(http, messages, trailers, trailers_only=False)


async def call(
    http: httpx.AsyncClient,
    method: str,
    request: message.Message | bytes,
    *,
    key: str | None,
    path: str = SERVICE,
    **headers: str,
) -> Reply:
    body = request if isinstance(request, bytes) else frame(request.SerializeToString())
    sent = {"content-type": GRPC_WEB, "x-grpc-web": "1", **headers}
    if key is not None:
        sent["authorization"] = f"Bearer {key}"
    reply = await http.post(f"{path}/{method}", content=body, headers=sent)
    assert reply.status_code == 200, reply.text
    return parse(reply)


@pytest_asyncio.fixture(loop_scope="module")
async def http(web: WebMesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=web.url, timeout=60) as client:
        yield client


def greeter(system: str = "Greeter. Be brief.") -> agents_pb2.AgentDefinition:
    return agents_pb2.AgentDefinition(
        name="greeter",
        type=agents_pb2.AGENT_TYPE_CUSTOM,
        model=agents_pb2.ModelSelection(route="default"),
        prompts=agents_pb2.AgentPrompts(system=system),
    )


async def new_session(
    http: httpx.AsyncClient, key: str, system: str = "Greeter.", rounds: int = 1
) -> str:
    created = await call(
        http,
        "CreateSession",
        orchestrator_pb2.CreateSessionRequest(
            session=sessions_pb2.Session(
                goal="Say hello",
                strategy=sessions_pb2.STRATEGY_ROUND_ROBIN,
                limits=sessions_pb2.SessionLimits(max_rounds=rounds),
                inline_agents=[greeter(system)],
            )
        ),
        key=key,
    )
    assert created.code == code_pb2.OK, created.message
    (reply,) = created.replies(orchestrator_pb2.CreateSessionResponse)
    return reply.session.name


async def test_a_unary_call_answers_one_frame_and_ok_trailers(
    web: WebMesh, http: httpx.AsyncClient
) -> None:
    key = await web.tenant()
    request = orchestrator_pb2.CreateAgentRequest(agent_id="greeter", agent=greeter())
    created = await call(http, "CreateAgent", request, key=key)
    assert created.http.headers["content-type"] == GRPC_WEB
    assert not created.trailers_only
    assert created.code == code_pb2.OK
    (reply,) = created.replies(orchestrator_pb2.CreateAgentResponse)
    assert reply.agent.name == "agents/greeter"
    got = await call(
        http, "GetAgent", orchestrator_pb2.GetAgentRequest(name="agents/greeter"), key=key
    )
    (agent,) = got.replies(orchestrator_pb2.GetAgentResponse)
    assert agent.agent.prompts.system == "Greeter. Be brief."


async def test_grpc_web_text_is_the_same_in_base64(web: WebMesh, http: httpx.AsyncClient) -> None:
    key = await web.tenant()
    body = base64.b64encode(
        frame(orchestrator_pb2.ListAgentsRequest(page_size=5).SerializeToString())
    )
    reply = await call(
        http, "ListAgents", body, key=key, **{"content-type": "application/grpc-web-text"}
    )
    assert reply.http.headers["content-type"] == "application/grpc-web-text"
    assert reply.code == code_pb2.OK
    assert len(reply.replies(orchestrator_pb2.ListAgentsResponse)) == 1


async def test_errors_carry_their_reason_and_field_violations_in_details_bin(
    web: WebMesh, http: httpx.AsyncClient
) -> None:
    key = await web.tenant()
    missing = await call(
        http, "GetSession", orchestrator_pb2.GetSessionRequest(name="sessions/nope"), key=key
    )
    assert missing.trailers_only
    assert missing.code == code_pb2.NOT_FOUND
    assert missing.reason == "SESSION_NOT_FOUND"
    assert missing.status.code == code_pb2.NOT_FOUND

    empty = orchestrator_pb2.CreateSessionRequest(session=sessions_pb2.Session(goal=""))
    bad = await call(http, "CreateSession", empty, key=key)
    assert bad.code == code_pb2.INVALID_ARGUMENT
    violations = error_details_pb2.BadRequest()
    assert any(detail.Unpack(violations) for detail in bad.status.details)
    assert "session.goal" in [v.field for v in violations.field_violations]

    anonymous = await call(http, "ListAgents", orchestrator_pb2.ListAgentsRequest(), key=None)
    assert anonymous.code == code_pb2.UNAUTHENTICATED


async def test_a_stream_sends_every_event_then_trailers_and_resumes_after_a_seq(
    web: WebMesh, http: httpx.AsyncClient
) -> None:
    key = await web.tenant()
    name = await new_session(http, key)
    ran = await call(http, "Run", orchestrator_pb2.RunRequest(session=name), key=key)
    assert ran.code == code_pb2.OK
    assert not ran.trailers_only
    events = [reply.event for reply in ran.replies(orchestrator_pb2.RunResponse)]
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= 4
    assert events[-1].WhichOneof("payload") == "session_completed"

    resumed = await call(
        http,
        "StreamSession",
        orchestrator_pb2.StreamSessionRequest(session=name, after_seq=2),
        key=key,
    )
    assert resumed.code == code_pb2.OK
    again = [reply.event for reply in resumed.replies(orchestrator_pb2.StreamSessionResponse)]
    assert [event.seq for event in again] == seqs[2:]
    assert again == events[2:]


async def test_a_streams_deadline_ends_it_with_deadline_exceeded_trailers(
    web: WebMesh, http: httpx.AsyncClient
) -> None:
    key = await web.tenant()
    name = await new_session(http, key, system="Slow talker.")
    ran = await call(
        http, "Run", orchestrator_pb2.RunRequest(session=name), key=key, **{"grpc-timeout": "800m"}
    )
    assert ran.code == code_pb2.DEADLINE_EXCEEDED, ran.trailers
    bad = await call(
        http,
        "StreamSession",
        orchestrator_pb2.StreamSessionRequest(session=name),
        key=key,
        **{"grpc-timeout": "soon"},
    )
    assert bad.code == code_pb2.INVALID_ARGUMENT
    assert "grpc-timeout" in bad.message


@pytest.mark.parametrize(
    ("path", "method"),
    [
        (SERVICE, "NoSuchMethod"),
        ("/agentmesh.memory.v1.MemoryService", "GetSession"),
        ("/agentmesh.inference.v1.InferenceService", "Generate"),
        ("/grpc.health.v1.Health", "Check"),
    ],
)
async def test_unknown_methods_and_internal_services_are_unimplemented(
    web: WebMesh, http: httpx.AsyncClient, path: str, method: str
) -> None:
    key = await web.tenant()
    reply = await call(http, method, b"\x00\x00\x00\x00\x00", key=key, path=path)
    assert reply.trailers_only
    assert reply.code == code_pb2.UNIMPLEMENTED
    assert reply.reason == "UNKNOWN_METHOD"


async def test_client_streaming_rpcs_are_unimplemented_with_a_reason(
    web: WebMesh, http: httpx.AsyncClient
) -> None:
    key = await web.tenant()
    reply = await call(http, "UploadDocument", frame(b""), key=key)
    assert reply.code == code_pb2.UNIMPLEMENTED
    assert reply.reason == "CLIENT_STREAMING_NOT_SUPPORTED"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\x00\x00", "5-byte header"),
        (frame(b"\x0a\x03abc") + b"junk", "follow"),
        (frame(b"", flag=0x80), "not a message frame"),
        (frame(b"", flag=0x01), "compressed"),
        (frame(b"\x0a\xff\xff\xff"), "is not a agentmesh.orchestrator.v1.GetSessionRequest"),
    ],
)
async def test_malformed_frames_are_invalid_argument_naming_the_body(
    web: WebMesh, http: httpx.AsyncClient, body: bytes, says: str
) -> None:
    key = await web.tenant()
    reply = await call(http, "GetSession", body, key=key)
    assert reply.code == code_pb2.INVALID_ARGUMENT
    assert says in reply.message
    violations = error_details_pb2.BadRequest()
    assert any(detail.Unpack(violations) for detail in reply.status.details)
    assert [v.field for v in violations.field_violations] == ["body"]


async def test_other_content_types_are_refused_and_cors_exposes_the_trailers(
    web: WebMesh, http: httpx.AsyncClient
) -> None:
    refused = await http.post(
        f"{SERVICE}/ListAgents", content=b"{}", headers={"content-type": "application/json"}
    )
    assert refused.status_code == 415
    assert refused.json()["details"][0]["reason"] == "UNSUPPORTED_MEDIA_TYPE"

    preflight = await http.options(
        f"{SERVICE}/ListAgents",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-grpc-web, grpc-timeout",
        },
    )
    assert preflight.status_code == 204
    allowed = preflight.headers["access-control-allow-headers"]
    assert {"x-grpc-web", "grpc-timeout", "authorization", "x-user-agent"} <= {
        h.strip() for h in allowed.split(",")
    }
    key = await web.tenant()
    reply = await call(
        http, "ListAgents", orchestrator_pb2.ListAgentsRequest(), key=key, Origin=ORIGIN
    )
    assert reply.http.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in reply.http.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed


async def test_a_slow_reader_is_cut_off_with_trailers_naming_the_seq_to_resume_after(
    web: WebMesh, http: httpx.AsyncClient
) -> None:
    key = await web.tenant()
    # 60 turns of about 100 KB: more than the socket buffers and the edge's 64 KB hold.
    name = await new_session(http, key, system="Long. Write a lot.", rounds=60)
    ran = await call(http, "Run", orchestrator_pb2.RunRequest(session=name), key=key)
    total = len(ran.messages)
    assert ran.code == code_pb2.OK
    cut_before = await web.metric("agentmesh_web_slow_consumers_total")
    body = frame(orchestrator_pb2.StreamSessionRequest(session=name).SerializeToString())
    host, port = web.url.removeprefix("http://").split(":")
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, unread
    reader.connect((host, int(port)))
    reader.sendall(
        f"POST {SERVICE}/StreamSession HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: {GRPC_WEB}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    deadline = time.monotonic() + 60
    while await web.metric("agentmesh_web_slow_consumers_total") <= cut_before:
        assert time.monotonic() < deadline, "the edge never cut the slow client off"
        await asyncio.sleep(0.2)
    raw = await asyncio.to_thread(_read_all, reader)
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    cut = parse(httpx.Response(200, headers={"content-type": GRPC_WEB}, content=_dechunk(chunked)))
    assert cut.code == code_pb2.RESOURCE_EXHAUSTED
    assert cut.reason == "SLOW_CONSUMER"
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in cut.status.details)
    after = int(info.metadata["after_seq"])
    seqs = [reply.event.seq for reply in cut.replies(orchestrator_pb2.StreamSessionResponse)]
    assert seqs == list(range(1, after + 1)), "everything queued was delivered, in order"
    assert after < total, "the stream was cut before its end"
