"""The inference gateway as the orchestrator's `ModelGateway`.

A gateway failure that ends the stream with a gRPC error becomes an `attempt_failed` event
without fallback, which the turn turns into a typed failure; cancellation of the consumer
cancels the gRPC call, which the gateway propagates to the provider request.

A gateway that cannot be reached (the connection is refused or lost: UNAVAILABLE without an
ErrorInfo, which every answer of the gateway itself carries) is called again with backoff,
for up to `unavailable_seconds`: a model call is idempotent by its key, and a gateway
restarted meanwhile answers it. When output had streamed before the connection was lost, a
`restart` event tells the turn to discard it first. After that budget the call fails with
UNAVAILABLE, reason GATEWAY_UNAVAILABLE, saying so in words (not the transport's string).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh.common.v1 import generation_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY, rpc_status_of

ERROR_DOMAIN = "orchestrator.agentmesh.dev"


class GatewayClient:
    """Streaming calls to `agentmesh.inference.v1.InferenceService`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout: float = 600.0,
        unavailable_seconds: float = 30.0,
        backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 2.0,
    ) -> None:
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel)
        self._timeout = timeout
        self._unavailable_seconds = unavailable_seconds
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds

    async def generate(
        self, tenant: str, request: inference_pb2.GenerateRequest
    ) -> AsyncIterator[generation_pb2.GenerateEvent]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._unavailable_seconds
        delay = self._backoff
        tries = 0
        while True:
            tries += 1
            streamed = False
            lost: grpc.aio.AioRpcError | None = None
            call = self.stub.Generate(
                request, metadata=((TENANT_METADATA_KEY, tenant),), timeout=self._timeout
            )
            try:
                async for reply in call:
                    streamed = streamed or reply.event.HasField("delta")
                    yield reply.event
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    raise
                status = rpc_status_of(exc)
                if not unreachable(status):
                    yield failed(status)  # the gateway's own answer: its reason is kept
                    return
                lost = exc
            finally:
                call.cancel()
            left = give_up - loop.time()
            if left <= 0:
                yield failed(
                    unavailable_status(
                        f"the inference gateway could not be reached for "
                        f"{self._unavailable_seconds:g} s ({tries} attempts; last: "
                        f"{'connection lost' if streamed else 'no connection'})",
                        detail=(lost.details() or "") if lost is not None else "",
                    )
                )
                return
            if streamed:  # what streamed before the connection was lost is discarded
                yield generation_pb2.GenerateEvent(
                    restart=generation_pb2.Restart(
                        reason="the connection to the inference gateway was lost",
                        next_attempt=tries + 1,
                    )
                )
            await asyncio.sleep(min(delay * (0.5 + random.random()), left))
            delay = min(delay * 2, self._max_backoff)


def unreachable(status: status_pb2.Status) -> bool:
    """True for UNAVAILABLE from the transport (no ErrorInfo): the gateway never answered."""
    if status.code != code_pb2.UNAVAILABLE:
        return False
    info = error_details_pb2.ErrorInfo()
    return not any(detail.Unpack(info) for detail in status.details)


def unavailable_status(message: str, *, detail: str = "") -> status_pb2.Status:
    """UNAVAILABLE with reason GATEWAY_UNAVAILABLE (`detail`: the transport's words)."""
    info = error_details_pb2.ErrorInfo(reason="GATEWAY_UNAVAILABLE", domain=ERROR_DOMAIN)
    if detail:
        info.metadata["transport"] = detail[:200]
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    status.details.add().Pack(info)
    return status


def failed(status: status_pb2.Status) -> generation_pb2.GenerateEvent:
    """A final `attempt_failed` (no fallback) carrying `status`."""
    return generation_pb2.GenerateEvent(
        attempt_failed=generation_pb2.AttemptFailed(
            # The rich status, so the turn still sees the reason (for example
            # STRUCTURED_OUTPUT_INVALID, which makes a planner try again).
            error=status,
            retryable=False,
            will_fall_back=False,
        )
    )
