"""A scripted `InferenceService` as its own process, to be killed with SIGKILL in tests.

Run as `python gateway_process.py PORT` (0 picks a free port); prints `PORT <n>` once it
serves. Every call streams "the gateway answers" in 8 slow pieces (0.1 s each), so a test
can kill the process while a call is streaming.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_orchestrator.testing import Reply, ScriptedGateway

ANSWER = "the gateway answers"


class SlowGateway(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self) -> None:
        self.scripted = ScriptedGateway(lambda _: Reply(text=ANSWER, chunks=8, delay_seconds=0.8))

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        async for event in self.scripted.generate("tenant", request):
            yield inference_pb2.GenerateResponse(event=event)


async def main(port: int) -> None:
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(SlowGateway(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
