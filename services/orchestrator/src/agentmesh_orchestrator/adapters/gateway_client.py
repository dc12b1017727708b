"""The inference gateway as the orchestrator's `ModelGateway`.

A gateway failure that ends the stream with a gRPC error becomes an `attempt_failed` event
without fallback, which the turn turns into a typed failure; cancellation of the consumer
cancels the gRPC call, which the gateway propagates to the provider request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from agentmesh.common.v1 import generation_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY, rpc_status_of


class GatewayClient:
    """Streaming calls to `agentmesh.inference.v1.InferenceService`."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 600.0) -> None:
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel)
        self._timeout = timeout

    async def generate(
        self, tenant: str, request: inference_pb2.GenerateRequest
    ) -> AsyncIterator[generation_pb2.GenerateEvent]:
        call = self.stub.Generate(
            request, metadata=((TENANT_METADATA_KEY, tenant),), timeout=self._timeout
        )
        try:
            async for reply in call:
                yield reply.event
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                raise
            yield generation_pb2.GenerateEvent(
                attempt_failed=generation_pb2.AttemptFailed(
                    # The rich status, so the turn still sees the reason (for example
                    # STRUCTURED_OUTPUT_INVALID, which makes a planner try again).
                    error=rpc_status_of(exc),
                    retryable=False,
                    will_fall_back=False,
                )
            )
        finally:
            call.cancel()
