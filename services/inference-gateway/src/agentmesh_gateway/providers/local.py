"""The local runner (``agentmesh.runner.v1.LocalRunnerService.Generate``) over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import grpc
import grpc.aio
from opentelemetry.trace import TracerProvider

from agentmesh.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh_common import create_channel
from agentmesh_gateway.domain import (
    FinishReason,
    GenerateCall,
    ProviderEvent,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
)
from agentmesh_gateway.errors import ErrorKind, UpstreamError
from agentmesh_gateway.protoconv import (
    FINISH_FROM_PROTO,
    config_to_proto,
    message_to_proto,
    tool_to_proto,
    usage_from_proto,
)
from agentmesh_gateway.providers.base import Target

_CODES = {
    grpc.StatusCode.UNAVAILABLE: ErrorKind.CONNECT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorKind.OVERLOADED,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorKind.TIMEOUT,
    grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: ErrorKind.CONTEXT_LENGTH,
    grpc.StatusCode.NOT_FOUND: ErrorKind.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: ErrorKind.BAD_REQUEST,
    grpc.StatusCode.UNAUTHENTICATED: ErrorKind.AUTH,
    grpc.StatusCode.PERMISSION_DENIED: ErrorKind.AUTH,
}


class LocalRunnerAdapter:
    """One channel per runner address; ``Target.base_url`` is ``host:port``."""

    name = "local"
    supports_response_schema = True

    def __init__(self, tracer_provider: TracerProvider, default_target: str) -> None:
        self._tracer_provider = tracer_provider
        self._default_target = default_target
        self._stubs: dict[str, tuple[grpc.aio.Channel, Any]] = {}

    def _stub(self, address: str) -> Any:
        entry = self._stubs.get(address)
        if entry is None:
            channel = create_channel(address, tracer_provider=self._tracer_provider)
            entry = (channel, runner_pb2_grpc.LocalRunnerServiceStub(channel))
            self._stubs[address] = entry
        return entry[1]

    async def aclose(self) -> None:
        for channel, _ in self._stubs.values():
            await channel.close(grace=None)
        self._stubs.clear()

    async def stream(
        self, call: GenerateCall, target: Target
    ) -> AsyncGenerator[ProviderEvent, None]:
        config = config_to_proto(call.config)
        messages = [message_to_proto(m) for m in call.messages]
        # A response_schema goes as is: the runner constrains decoding to it, so the answer
        # always parses. It is not also written into the prompt as for providers without
        # structured output: SmolLM2-135M given the raw schema copied its patterns into the
        # values and rambled past max_tokens (the agent's own prompt says what fields mean).
        request = runner_pb2.GenerateRequest(
            model=target.model,
            messages=messages,
            tools=[tool_to_proto(t) for t in call.tools],
            config=config,
            request_id=call.idempotency_key,
        )
        address = target.base_url or self._default_target
        # No deadline for the whole call: a local model on a busy CPU may take minutes for a
        # long answer while tokens keep coming. `timeout` bounds each wait for the next event
        # (the first one included), as it does for the HTTP providers' chunks.
        stream = self._stub(address).Generate(request)
        tool_index = -1
        try:
            while True:
                try:
                    async with asyncio.timeout(target.timeout):
                        response = await stream.read()
                except TimeoutError:
                    raise UpstreamError(
                        ErrorKind.TIMEOUT,
                        f"local runner at {address}: no token for {target.timeout:g} s",
                    ) from None
                if not isinstance(response, runner_pb2.GenerateResponse):  # EOF
                    break
                event = response.event
                which = event.WhichOneof("event")
                if which == "delta":
                    delta = event.delta
                    kind = delta.WhichOneof("delta")
                    if kind == "text":
                        yield TextDelta(delta.text)
                    elif kind == "thinking":
                        yield ThinkingDelta(delta.thinking)
                    elif kind == "tool_call":
                        tc = delta.tool_call
                        tool_index = max(tool_index, tc.index)
                        yield ToolCallDelta(tc.index, tc.id, tc.name, tc.arguments_fragment)
                elif which == "finished":
                    finished = event.finished
                    reason = FINISH_FROM_PROTO.get(finished.finish_reason, FinishReason.STOP)
                    usage = usage_from_proto(finished.usage) if finished.HasField("usage") else None
                    yield StreamEnd(reason, usage)
                    return
        except grpc.aio.AioRpcError as exc:
            error_kind = _CODES.get(exc.code(), ErrorKind.SERVER_ERROR)
            raise UpstreamError(
                error_kind, f"local runner at {address}: {exc.code().name}: {exc.details()}"
            ) from None
        finally:
            stream.cancel()
        raise UpstreamError(ErrorKind.TRUNCATED, "local runner stream ended without finished")
