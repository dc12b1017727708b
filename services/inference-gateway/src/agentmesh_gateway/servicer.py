"""gRPC servicer of the inference gateway: converts protos to domain calls and back."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh.common.v1 import generation_pb2, operations_pb2, user_settings_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY, FieldViolation, InvalidArgument

from .deployment_views import DeploymentView
from .domain import (
    AttemptFailed,
    AttemptStarted,
    CacheMode,
    Finished,
    GenerateCall,
    Locality,
    MidStreamPolicy,
    Restart,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolChoice,
)
from .gateway import Gateway
from .limits import CircuitState
from .protoconv import (
    FINISH_TO_PROTO,
    config_from_proto,
    dict_to_struct,
    message_from_proto,
    tool_call_to_proto,
    tool_from_proto,
    usage_to_proto,
)
from .routes import Deployment
from .streaming import coalesced

ERROR_DOMAIN = "agentmesh.inference-gateway"
_TOOL_CHOICE = {
    inference_pb2.TOOL_CHOICE_UNSPECIFIED: ToolChoice.AUTO,
    inference_pb2.TOOL_CHOICE_AUTO: ToolChoice.AUTO,
    inference_pb2.TOOL_CHOICE_NONE: ToolChoice.NONE,
    inference_pb2.TOOL_CHOICE_REQUIRED: ToolChoice.REQUIRED,
}
_CACHE_MODE = {
    inference_pb2.CACHE_MODE_UNSPECIFIED: CacheMode.DEFAULT,
    inference_pb2.CACHE_MODE_SKIP: CacheMode.SKIP,
    inference_pb2.CACHE_MODE_REFRESH: CacheMode.REFRESH,
}
_CIRCUIT = {
    CircuitState.CLOSED: operations_pb2.CIRCUIT_STATE_CLOSED,
    CircuitState.OPEN: operations_pb2.CIRCUIT_STATE_OPEN,
    CircuitState.HALF_OPEN: operations_pb2.CIRCUIT_STATE_HALF_OPEN,
}
_HEALTH = {
    CircuitState.CLOSED: operations_pb2.DEPLOYMENT_HEALTH_HEALTHY,
    CircuitState.HALF_OPEN: operations_pb2.DEPLOYMENT_HEALTH_DEGRADED,
    CircuitState.OPEN: operations_pb2.DEPLOYMENT_HEALTH_UNHEALTHY,
}
Response = inference_pb2.GenerateResponse
Event = generation_pb2.GenerateEvent
DeltaPb = generation_pb2.Delta


def _tenant(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY and isinstance(value, str):
            return value.strip()
    return ""


_PREFERENCE = {
    user_settings_pb2.MODEL_PREFERENCE_LOCAL: Locality.LOCAL,
    user_settings_pb2.MODEL_PREFERENCE_ONLINE: Locality.ONLINE,
}
_LOCALITY = {
    "local": inference_pb2.LOCALITY_LOCAL,
    "online": inference_pb2.LOCALITY_ONLINE,
}


def _call_from_request(request: inference_pb2.GenerateRequest, tenant: str = "") -> GenerateCall:
    return GenerateCall(
        messages=tuple(message_from_proto(m) for m in request.messages),
        route=request.route,
        provider=request.provider,
        model=request.model,
        tools=tuple(tool_from_proto(t) for t in request.tools),
        tool_choice=_TOOL_CHOICE.get(request.tool_choice, ToolChoice.AUTO),
        config=config_from_proto(request.config),
        tenant=tenant,
        idempotency_key=request.idempotency_key,
        mid_stream=(
            MidStreamPolicy.ERROR
            if request.mid_stream_failure == inference_pb2.MID_STREAM_FAILURE_POLICY_ERROR
            else MidStreamPolicy.RESTART
        ),
        fail_fast_on_rate_limit=request.fail_fast_on_rate_limit,
        session=request.session,
        agent=request.agent,
        cache=_CACHE_MODE.get(request.cache, CacheMode.DEFAULT),
        prefer=_PREFERENCE.get(request.model_preference),
    )


def _attempt_failed(event: AttemptFailed) -> Response:
    info = error_details_pb2.ErrorInfo(
        reason=event.reason,
        domain=ERROR_DOMAIN,
        metadata={"deployment": event.deployment},
    )
    status = status_pb2.Status(code=code_pb2.Code.Value(event.code), message=event.message)
    status.details.add().Pack(info)
    return Response(
        event=Event(
            attempt_failed=generation_pb2.AttemptFailed(
                error=status,
                retryable=event.retryable,
                will_fall_back=event.will_fall_back,
                attempt=event.attempt,
                streamed_tokens=event.streamed_tokens,
                usage=usage_to_proto(event.usage) if event.usage is not None else None,
            )
        )
    )


def _finished(event: Finished) -> Response:
    finished = generation_pb2.Finished(
        finish_reason=FINISH_TO_PROTO[event.finish_reason],
        usage=usage_to_proto(event.usage),
        provider=event.provider,
        model=event.model,
        tool_calls=[tool_call_to_proto(tc) for tc in event.tool_calls],
        text=event.text,
        cached=event.cached,
    )
    if event.structured_output is not None:
        finished.structured_output.CopyFrom(dict_to_struct(event.structured_output))
    return Response(event=Event(finished=finished))


def _model_info(deployment: Deployment, gateway: Gateway) -> inference_pb2.ModelInfo:
    return inference_pb2.ModelInfo(
        route=deployment.route,
        deployment=deployment.name,
        provider=deployment.provider,
        model=deployment.model,
        priority=deployment.priority,
        weight=deployment.weight,
        context_window_tokens=deployment.context_window,
        input_price_micros_per_million=deployment.input_price_micros_per_million,
        output_price_micros_per_million=deployment.output_price_micros_per_million,
        supports_tools=True,
        supports_response_schema=gateway.supports_response_schema(deployment.provider),
        locality=_LOCALITY[deployment.locality],
    )


def _health(view: DeploymentView) -> operations_pb2.DeploymentHealth.ValueType:
    """Unhealthy: open circuit or no key; degraded: half-open or recent failures."""
    if not view.credentials_configured:
        return operations_pb2.DEPLOYMENT_HEALTH_UNHEALTHY
    if view.circuit is CircuitState.CLOSED and view.consecutive_failures:
        return operations_pb2.DEPLOYMENT_HEALTH_DEGRADED
    return _HEALTH[view.circuit]


class GatewayServicer(inference_pb2_grpc.InferenceServiceServicer):
    """`agentmesh.inference.v1.InferenceService`."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def Generate(
        self,
        request: inference_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncGenerator[inference_pb2.GenerateResponse, None]:
        call = _call_from_request(request, _tenant(context))
        async with aclosing(coalesced(self._gateway.generate(call))) as batches:
            async for batch in batches:
                for event in batch:
                    kind = type(event)
                    if kind is TextDelta:
                        yield Response(event=Event(delta=DeltaPb(text=event.text)))  # type: ignore[union-attr,unused-ignore]
                    elif kind is ToolCallDelta:
                        assert isinstance(event, ToolCallDelta)
                        yield Response(
                            event=Event(
                                delta=DeltaPb(
                                    tool_call=generation_pb2.ToolCallDelta(
                                        index=event.index,
                                        id=event.id,
                                        name=event.name,
                                        arguments_fragment=event.arguments_fragment,
                                    )
                                )
                            )
                        )
                    elif kind is ThinkingDelta:
                        assert isinstance(event, ThinkingDelta)
                        yield Response(event=Event(delta=DeltaPb(thinking=event.text)))
                    elif kind is AttemptStarted:
                        assert isinstance(event, AttemptStarted)
                        yield Response(
                            event=Event(
                                attempt_started=generation_pb2.AttemptStarted(
                                    provider=event.provider,
                                    model=event.model,
                                    attempt=event.attempt,
                                    deployment=event.deployment,
                                )
                            )
                        )
                    elif kind is AttemptFailed:
                        assert isinstance(event, AttemptFailed)
                        yield _attempt_failed(event)
                    elif kind is Restart:
                        assert isinstance(event, Restart)
                        yield Response(
                            event=Event(
                                restart=generation_pb2.Restart(
                                    reason=event.reason, next_attempt=event.next_attempt
                                )
                            )
                        )
                    elif kind is Finished:
                        assert isinstance(event, Finished)
                        yield _finished(event)

    async def ListModels(
        self,
        request: inference_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_pb2.ListModelsResponse:
        page_size = request.page_size or 100
        if not 1 <= page_size <= 1000:
            raise InvalidArgument(
                "bad page size", violations=[FieldViolation("page_size", "must be 1-1000")]
            )
        try:
            offset = int(request.page_token or "0")
        except ValueError:
            raise InvalidArgument(
                "bad page token", violations=[FieldViolation("page_token", "not a token we sent")]
            ) from None
        table = self._gateway.table
        if request.route and request.route not in table.routes:
            self._gateway.resolve(request.route)  # raises NotFound
        rows = [
            d
            for name, deployments in table.routes.items()
            if not request.route or name == request.route
            for d in deployments
        ]
        page = rows[offset : offset + page_size]
        next_token = str(offset + page_size) if offset + page_size < len(rows) else ""
        return inference_pb2.ListModelsResponse(
            models=[_model_info(d, self._gateway) for d in page], next_page_token=next_token
        )

    async def GetProviderStatus(
        self,
        request: inference_pb2.GetProviderStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_pb2.GetProviderStatusResponse:
        return inference_pb2.GetProviderStatusResponse(
            deployments=[
                self._status(view) for view in self._gateway.status(request.provider, request.route)
            ]
        )

    def _status(self, view: DeploymentView) -> inference_pb2.DeploymentStatus:
        d = view.deployment
        out = inference_pb2.DeploymentStatus(
            model=_model_info(d, self._gateway),
            health=_health(view),
            circuit_state=_CIRCUIT[view.circuit],
            consecutive_failures=view.consecutive_failures,
            rpm_limit=d.rpm,
            rpm_remaining=max(view.rpm_remaining, 0),
            tpm_limit=d.tpm,
            tpm_remaining=max(view.tpm_remaining, 0),
            credentials_configured=view.credentials_configured,
        )
        if view.circuit is not CircuitState.CLOSED:
            out.circuit_open_until.CopyFrom(
                timestamp_pb2.Timestamp(
                    seconds=int(time.time() + view.seconds_until_probe), nanos=0
                )
            )
        if view.last_error is not None:
            out.last_error.CopyFrom(
                status_pb2.Status(
                    code=code_pb2.Code.Value(view.last_error.grpc_code),
                    message=view.last_error.message,
                )
            )
        return out

    async def CountTokens(
        self,
        request: inference_pb2.CountTokensRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> inference_pb2.CountTokensResponse:
        call = GenerateCall(
            messages=tuple(message_from_proto(m) for m in request.messages),
            route=request.route,
            provider=request.provider,
            model=request.model,
            tools=tuple(tool_from_proto(t) for t in request.tools),
        )
        tokens, window = self._gateway.count_tokens(call)
        return inference_pb2.CountTokensResponse(
            tokens=tokens, estimated=True, context_window_tokens=window
        )
