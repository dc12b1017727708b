"""A memory service killed with SIGKILL and restarted on the same port is used again by a
running orchestrator within 3 s of listening (issue 16, finding 6: it took 20-26 s)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path

import grpc
import pytest

from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentmesh_cli.mesh import MEMORY, ServiceProcess
from tests.timing import time_scale

from .conftest import Answer, Chat, Mesh, start_e2e_mesh, stop_e2e_mesh

pytestmark = pytest.mark.slow

#: The target of the finding: served within this many seconds of listening again.
SERVED_WITHIN_SECONDS = 3.0
#: The channel tries to reconnect at least this often (1 s backoff at most, +20 % jitter, and
#: some event-loop lag); before the fix the gaps grew to 5 s.
MAX_ATTEMPT_GAP_SECONDS = 1.6


def hello(_: Chat) -> Answer:
    return Answer(text="hello")


async def test_a_restarted_memory_service_is_used_again_within_3_s(tmp_path: Path) -> None:
    mesh: Mesh = await start_e2e_mesh(tmp_path, hello, runner=False)
    memory = mesh.services[MEMORY.name]
    restarted: ServiceProcess | None = None
    try:
        async with grpc.aio.insecure_channel(mesh.orchestrator.address) as channel:
            # the orchestrator's channel to memory is connected
            assert await _list_agents_code(mesh, channel) == grpc.StatusCode.OK
            assert memory.process is not None
            memory.process.send_signal(signal.SIGKILL)
            await memory.process.wait()
            await memory.stop()
            # While memory is down, its port refuses gRPC (it accepts TCP and hangs up at once,
            # so each of the orchestrator's connect attempts is seen), and calls fail: the
            # channel backs off, and the gap between attempts is how long a restarted memory
            # service can wait before it is used again.
            attempts: list[float] = []

            async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                attempts.append(time.monotonic())
                writer.close()

            refusing = await asyncio.start_server(hang_up, "127.0.0.1", memory.port)
            down_until = time.monotonic() + 14
            while time.monotonic() < down_until:
                code = await _list_agents_code(mesh, channel)
                assert code != grpc.StatusCode.OK, "memory is down"
                await asyncio.sleep(0.5)
            refusing.close()
            await refusing.wait_closed()
            gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
            assert len(attempts) > 3, "the orchestrator kept trying to reach memory"
            assert max(gaps) <= MAX_ATTEMPT_GAP_SECONDS, (
                f"connect attempts {max(gaps):.1f} s apart: a restarted memory would wait that long"
            )

            restarted = ServiceProcess(
                MEMORY, dict(memory.env), log_path=tmp_path / "logs" / "memory-restarted.log"
            )
            await restarted.start()  # returns on its "service started" line: it listens
            assert restarted.port == memory.port
            listening = time.monotonic()
            # The target is for any machine; a loaded one gets at most half as long again (the
            # memory service's own first answer is slower there), not the full time scale,
            # which would hide a 5 s reconnect backoff.
            deadline = listening + SERVED_WITHIN_SECONDS * min(time_scale(), 1.5)
            while (code := await _list_agents_code(mesh, channel)) != grpc.StatusCode.OK:
                assert time.monotonic() < deadline, f"still {code.name} after the restart"
                await asyncio.sleep(0.05)
            served_after = time.monotonic() - listening
            assert time.monotonic() < deadline, f"served only {served_after:.1f} s after listening"
    finally:
        if restarted is not None:
            await restarted.stop()
        await stop_e2e_mesh(mesh)
    print(
        f"served {served_after:.2f} s after memory listened again; "
        f"connect attempts at most {max(gaps):.2f} s apart while it was down"
    )


async def _list_agents_code(mesh: Mesh, channel: grpc.aio.Channel) -> grpc.StatusCode:
    """ListAgents through the orchestrator (it reads memory): its status code."""
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    try:
        await stub.ListAgents(
            orchestrator_pb2.ListAgentsRequest(),
            metadata=(("authorization", f"Bearer {mesh.api_key}"),),
            timeout=2,
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK
