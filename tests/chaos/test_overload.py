"""Overload: 4x an admission limit of concurrent sessions against one orchestrator process.
Every CreateSession and Run must end served (OK, the session completed) or refused with
RESOURCE_EXHAUSTED, never DEADLINE_EXCEEDED or anything else (issue 16, finding 7).

The limit is `AGENTMESH_CHAOS_ADMISSION_LIMIT` (default 4 in the reduced run, 50 in full:
200 concurrent sessions, as in the finding). `AGENTMESH_CHAOS_ORCHESTRATOR_ENV` ("NAME=VALUE,
...") is given to the orchestrator, to set its admission limit to that number once admission
control (branch i16-admission) is merged."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest

from agentmesh.common.v1 import sessions_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from tests.e2e.conftest import Answer, Chat, start_e2e_mesh, stop_e2e_mesh
from tests.e2e.test_mesh import member
from tests.timing import scaled

from .support import FIGURES, OUTCOMES, TERMINAL, pending, strict

pytestmark = pytest.mark.slow
#: One message per failure kind, for the report.
EXAMPLES: dict[str, str] = {}


def limit() -> int:
    default = "50" if strict() else "4"
    return int(os.environ.get("AGENTMESH_CHAOS_ADMISSION_LIMIT") or default)


def orchestrator_env() -> dict[str, str]:
    pairs = os.environ.get("AGENTMESH_CHAOS_ORCHESTRATOR_ENV", "")
    return dict(pair.split("=", 1) for pair in pairs.split(",") if "=" in pair)


def steady(_: Chat) -> Answer:
    return Answer(text="an answer that takes a while", delay_seconds=0.5)


@pytest.mark.timeout(scaled(90 + limit()))
async def test_overload_is_served_or_refused_never_timed_out(tmp_path: Path) -> None:
    concurrent = 4 * limit()
    # The default lease (15 s), not the e2e suite's 2 s made for fast takeovers: with 2 s, a
    # replica this loaded misses renewals and its runs end FAILED_PRECONDITION (9 of 200 on
    # a quiet 2-core machine, 200 of 200 on a loaded one).
    lease = {
        "AGENTMESH_ORCHESTRATOR_LEASE_TTL_SECONDS": "15",
        "AGENTMESH_ORCHESTRATOR_TAKEOVER_INTERVAL_SECONDS": "5",
    }
    mesh = await start_e2e_mesh(
        tmp_path, steady, runner=False, orchestrator={**lease, **orchestrator_env()}
    )
    metadata = (("authorization", f"Bearer {mesh.api_key}"),)
    outcomes: Counter[str] = Counter()
    try:
        async with grpc.aio.insecure_channel(mesh.orchestrator.address) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

            async def one(i: int) -> None:
                try:
                    reply = await stub.CreateSession(
                        orchestrator_pb2.CreateSessionRequest(
                            session=sessions_pb2.Session(
                                goal=f"load {i}",
                                inline_agents=[member("solo")],
                                limits=sessions_pb2.SessionLimits(max_rounds=1),
                            ),
                            request_id=uuid.uuid4().hex,
                        ),
                        metadata=metadata,
                        timeout=scaled(60),
                    )
                except grpc.aio.AioRpcError as error:
                    outcomes[f"CreateSession {error.code().name}"] += 1
                    return
                outcomes["CreateSession OK"] += 1
                outcomes[f"Run {await _run(stub, reply.session.name, metadata)}"] += 1

            await asyncio.gather(*(one(i) for i in range(concurrent)))
    finally:
        await stop_e2e_mesh(mesh)
    FIGURES["overload concurrent sessions"] += concurrent
    OUTCOMES["overload"].update(outcomes)
    allowed = {"OK", "RESOURCE_EXHAUSTED"}
    bad = {k: n for k, n in outcomes.items() if k.split(" ", 1)[1] not in allowed}
    pending(("finding 7 (admission control: refuse, never time out)", not bad, f"{bad} {EXAMPLES}"))


async def _run(
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub,
    session: str,
    metadata: tuple[tuple[str, str], ...],
) -> str:
    """How the Run ended: OK (session completed), the RPC's status, or the failed session's
    status code name."""
    try:
        async for reply in stub.Run(
            orchestrator_pb2.RunRequest(session=session, request_id=uuid.uuid4().hex),
            metadata=metadata,
            timeout=scaled(60),
        ):
            kind = reply.event.WhichOneof("payload")
            if kind in TERMINAL:
                if kind == "session_completed":
                    return "OK"
                if kind == "session_failed":
                    error = reply.event.session_failed.error
                    EXAMPLES.setdefault(str(error.code), error.message)
                    return grpc.StatusCode(_code(error.code)).name
                return kind
    except grpc.aio.AioRpcError as error:
        EXAMPLES.setdefault(error.code().name, error.details() or "")
        return error.code().name
    return "ended without a terminal event"


def _code(number: int) -> tuple[int, str]:
    return next(code.value for code in grpc.StatusCode if code.value[0] == number)
