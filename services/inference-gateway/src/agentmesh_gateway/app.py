"""Composition root of the inference gateway: settings, resources and servicers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from functools import partial

from opentelemetry.trace import TracerProvider

from agentmesh.inference.v1 import inference_pb2_grpc
from agentmesh_common import Registration, Telemetry, create_channel

from .cache import CacheBackend, MemoryCache, ResponseCache
from .cache_redis import RedisCache
from .gateway import Gateway, RetryPolicy
from .http_api import HttpContext
from .http_server import HttpServer
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
from .tenancy import MemoryTenancy, TenantKeys

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
    stack: AsyncExitStack,
    settings: GatewaySettings,
    telemetry: Telemetry,
    *,
    on_http_started: Callable[[int], None] | None = None,
) -> Sequence[Registration]:
    """Open the service's resources on `stack` and return what to serve.

    ``on_http_started`` is told the HTTP API's bound port (in-process tests bind port 0)."""
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
    metrics = GatewayMetrics(telemetry.metrics)
    cache: ResponseCache | None = None
    backend = cache_backend(settings)
    if backend is not None:
        cache = ResponseCache(backend, metrics)
        stack.push_async_callback(cache.aclose)
    gateway = Gateway(
        table,
        adapters,
        metrics=metrics,
        tracer=telemetry.tracer("agentmesh.gateway"),
        cache=cache,
        retry=RetryPolicy(
            base_delay=settings.retry_base_seconds,
            max_delay=settings.retry_max_seconds,
            max_rate_limit_wait=settings.max_rate_limit_wait_seconds,
        ),
    )
    if settings.http_port is not None:
        http = await start_http(stack, settings, telemetry, gateway)
        if on_http_started is not None:
            on_http_started(http.port)
    servicer = GatewayServicer(gateway)
    return [
        Registration(
            GRPC_SERVICE,
            partial(inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer),
        )
    ]


def cache_backend(settings: GatewaySettings) -> CacheBackend | None:
    if settings.cache_backend == "redis":
        assert settings.cache_redis_url is not None  # the settings check it
        return RedisCache(settings.cache_redis_url)
    if settings.cache_backend == "memory" and settings.cache_max_bytes > 0:
        return MemoryCache(settings.cache_max_bytes)
    return None


async def start_http(
    stack: AsyncExitStack, settings: GatewaySettings, telemetry: Telemetry, gateway: Gateway
) -> HttpServer:
    """The OpenAI/Anthropic HTTP API on ``settings.http_port``, stopped before the gateway's
    resources close. Announced like the gRPC port (a JSON line on stdout) for port 0."""
    keys: TenantKeys | None = None
    tenancy: MemoryTenancy | None = None
    if settings.memory_target:
        channel = create_channel(
            settings.memory_target,
            tracer_provider=telemetry.tracer_provider,
            retry_unavailable=True,
        )
        stack.push_async_callback(channel.close, None)
        tenancy = MemoryTenancy(channel)
    if settings.http_auth == "api_key":
        assert tenancy is not None  # the settings require a memory target
        keys = TenantKeys(tenancy.lookup, cache_seconds=settings.api_key_cache_seconds)
        # Revoked keys are dropped from the cache as the memory service announces them.
        key_watch = asyncio.create_task(keys.keys.follow(tenancy.watch_keys))

        async def stop_key_watch() -> None:
            key_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await key_watch

        stack.push_async_callback(stop_key_watch)
    context = HttpContext(gateway, keys, tenancy, open_tenant=settings.http_tenant)
    server = HttpServer(context, settings.host, settings.http_port or 0, settings.grace_seconds)
    await server.start()
    stack.push_async_callback(server.stop)
    facts = {"http_port": server.port, "auth": settings.http_auth}
    _logger.info("http started", extra=facts)  # the same line as the web edge's, for `up`
    print(json.dumps({"message": "http started", "service": SERVICE_NAME, **facts}), flush=True)
    return server
