"""A `Run` refused by a draining replica (UNAVAILABLE, REPLICA_DRAINING) before any event is
asked again, so another replica runs the session; following it with StreamSession instead would
wait for a session nobody runs. A fake orchestrator on port 0 plays the two replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_status import rpc_status

from agentmesh.common.v1 import events_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentmesh_client import errors
from agentmesh_client.client import AgentmeshClient
from agentmesh_client.status import to_rpc_status


class DrainingThenServing(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Run(
        self, request: orchestrator_pb2.RunRequest, context: Any
    ) -> AsyncIterator[orchestrator_pb2.RunResponse]:
        self.calls.append("Run")
        if len(self.calls) == 1:
            status = rpc_status.to_status(
                to_rpc_status(
                    errors.Unavailable("shutting down", reason="REPLICA_DRAINING", retry_after=0),
                    "agentmesh.orchestrator",
                )
            )
            await context.abort(status.code, status.details, status.trailing_metadata)
        yield orchestrator_pb2.RunResponse(
            event=events_pb2.SessionEvent(
                session=request.session,
                seq=1,
                session_completed=events_pb2.SessionCompleted(final_answer="done"),
            )
        )

    async def StreamSession(
        self, request: orchestrator_pb2.StreamSessionRequest, context: Any
    ) -> AsyncIterator[orchestrator_pb2.StreamSessionResponse]:
        self.calls.append("StreamSession")
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nobody runs this session")
        yield orchestrator_pb2.StreamSessionResponse()  # pragma: no cover


async def test_a_run_refused_by_a_draining_replica_is_asked_again() -> None:
    servicer = DrainingThenServing()
    server = grpc.aio.server()
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AgentmeshClient(f"127.0.0.1:{port}", api_key="k", timeout=5) as client:
            events = [event async for event in client.run("sessions/s1")]
    finally:
        await server.stop(None)
    assert servicer.calls == ["Run", "Run"]
    assert events[-1].session_completed.final_answer == "done"
