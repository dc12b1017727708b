"""Composition root of the inference gateway: settings, resources and servicers."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from functools import partial

from opentelemetry.trace import TracerProvider

from agentmesh.inference.v1 import inference_pb2_grpc
from agentmesh_common import Registration, Telemetry

from .gateway import Gateway, RetryPolicy
from .observability import GatewayMetrics
from .providers._http import new_client
from .providers.anthropic import AnthropicAdapter
from .providers.base import ProviderAdapter
from .providers.gemini import GeminiAdapter
from .providers.local import LocalRunnerAdapter
from .providers.ollama import OllamaAdapter
from .providers.openai import COMPATIBLE, GROQ, OPENAI, XAI, OpenAIChatAdapter
from .routes import RouteTable, default_routes, load_routes
from .servicer import GatewayServicer
from .settings import GatewaySettings

SERVICE_NAME = "inference-gateway"
GRPC_SERVICE = "agentmesh.inference.v1.InferenceService"

_logger = logging.getLogger("agentmesh.gateway")


def build_adapters(
    tracer_provider: TracerProvider, runner_target: str
) -> dict[str, ProviderAdapter]:
    """One adapter (so one long-lived HTTP client or channel) per provider."""
    tracer = tracer_provider.get_tracer("agentmesh.gateway.http")
    return {
        "openai": OpenAIChatAdapter(OPENAI, new_client(tracer)),
        "xai": OpenAIChatAdapter(XAI, new_client(tracer)),
        "groq": OpenAIChatAdapter(GROQ, new_client(tracer)),
        "openai_compatible": OpenAIChatAdapter(COMPATIBLE, new_client(tracer)),
        "anthropic": AnthropicAdapter(new_client(tracer)),
        "gemini": GeminiAdapter(new_client(tracer)),
        "ollama": OllamaAdapter(new_client(tracer)),
        "local": LocalRunnerAdapter(tracer_provider, runner_target),
    }


def route_table(settings: GatewaySettings, environ: Mapping[str, str] | None = None) -> RouteTable:
    if settings.routes_file is None:
        return default_routes(settings.runner_target)
    return load_routes(settings.routes_file, environ)


async def build(
    stack: AsyncExitStack, settings: GatewaySettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Open the service's resources on `stack` and return what to serve."""
    table = route_table(settings)  # RoutesFileError names file:line; the process exits 1
    for deployment in table.deployments():
        if deployment.needs_key and not deployment.keys:
            _logger.warning(
                "deployment has no API key; its calls will fail",
                extra={"deployment": deployment.name, "sources": list(deployment.key_sources)},
            )
    adapters = build_adapters(telemetry.tracer_provider, settings.runner_target)
    for adapter in adapters.values():
        stack.push_async_callback(adapter.aclose)
    gateway = Gateway(
        table,
        adapters,
        metrics=GatewayMetrics(telemetry.metrics),
        tracer=telemetry.tracer("agentmesh.gateway"),
        retry=RetryPolicy(
            base_delay=settings.retry_base_seconds,
            max_delay=settings.retry_max_seconds,
            max_rate_limit_wait=settings.max_rate_limit_wait_seconds,
        ),
    )
    servicer = GatewayServicer(gateway)
    return [
        Registration(
            GRPC_SERVICE,
            partial(inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer),
        )
    ]
