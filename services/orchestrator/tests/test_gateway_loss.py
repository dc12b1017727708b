"""Losing the inference gateway mid-session (issue 16, finding 5).

The gateway is a real gRPC server in its own process, killed with SIGKILL while a call
streams and started again on the same port: the call is made again (it is idempotent by its
key) and the session goes on. A gateway that does not come back fails the session with a
clear reason, not the transport's words.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from opentelemetry.trace import NoOpTracerProvider

from agentmesh.common.v1 import sessions_pb2
from agentmesh_common import create_channel
from agentmesh_orchestrator.adapters.gateway_client import GatewayClient
from agentmesh_orchestrator.engine import SessionEngine
from agentmesh_orchestrator.testing import InMemorySessionStore

from .conftest import TENANT, make_agent, make_session
from .gateway_process import ANSWER

SCRIPT = Path(__file__).with_name("gateway_process.py")
NAME = "sessions/s1"


class Gateways:
    """Gateway processes started by a test (all killed at its end)."""

    def __init__(self) -> None:
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, port: int = 0) -> tuple[asyncio.subprocess.Process, int]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), str(port), stdout=asyncio.subprocess.PIPE
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line.startswith(b"PORT "), line
        return process, int(line.split()[1])


@pytest.fixture
async def gateways() -> AsyncIterator[Gateways]:
    started = Gateways()
    try:
        yield started
    finally:
        for process in started.processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


def channel_to(port: int) -> grpc.aio.Channel:
    return create_channel(
        f"127.0.0.1:{port}", tracer_provider=NoOpTracerProvider(), default_timeout=None
    )


async def until(predicate: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in time: {what}")
        await asyncio.sleep(0.005)


async def test_a_session_goes_on_when_its_gateway_is_killed_mid_stream_and_restarted(
    gateways: Gateways,
) -> None:
    first, port = await gateways.start()
    channel = channel_to(port)
    store = InMemorySessionStore()
    engine = SessionEngine(
        store=store, gateway=GatewayClient(channel, unavailable_seconds=60), tools={}
    )
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    try:
        task = asyncio.create_task(engine.run(engine.open_run(TENANT, session, [make_agent("a")])))
        events = store.events[(TENANT, NAME)]
        await until(lambda: any(e.HasField("content_delta") for e in events), "a delta stored")
        first.kill()
        await first.wait()
        await asyncio.sleep(1.0)  # down for a while, as a crashed gateway is
        await gateways.start(port)
        final = await asyncio.wait_for(task, 60)
    finally:
        await channel.close()

    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED, final.error
    assert final.final_answer == ANSWER
    completed = [e for e in events if e.HasField("message_completed")]
    assert len(completed) == 1
    answer_id = completed[0].message_id
    streamed = "".join(e.content_delta.text for e in events if e.message_id == answer_id)
    assert streamed == ANSWER, "the answer streamed whole under the id it completed with"
    cut = {e.message_id for e in events if e.HasField("content_delta")} - {answer_id}
    assert len(cut) == 1, "what streamed before the kill is under its own, abandoned id"


async def test_a_gateway_that_stays_away_fails_the_session_with_a_clear_reason() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = channel_to(port)
    store = InMemorySessionStore()
    engine = SessionEngine(
        store=store, gateway=GatewayClient(channel, unavailable_seconds=1.0), tools={}
    )
    session = make_session(
        sessions_pb2.STRATEGY_ROUND_ROBIN, limits=sessions_pb2.SessionLimits(max_rounds=1)
    )
    try:
        final = await asyncio.wait_for(
            engine.run(engine.open_run(TENANT, session, [make_agent("a")])), 30
        )
    finally:
        await channel.close()

    assert final.status == sessions_pb2.SESSION_STATUS_FAILED
    assert final.error.code == code_pb2.UNAVAILABLE
    assert final.error.message.startswith("the inference gateway could not be reached for 1 s")
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in final.error.details)
    assert info.reason == "GATEWAY_UNAVAILABLE"
    failed = store.events[(TENANT, NAME)][-1]
    assert failed.session_failed.error.message == final.error.message
