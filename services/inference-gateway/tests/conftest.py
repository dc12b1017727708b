"""Fixtures of the gateway tests: fake providers on port 0 and gateways wired to them.

The fakes live in ``tests/fakes`` and are imported under a name unique to this service
(the suite runs with ``--import-mode=importlib``, so test folders are not on sys.path).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from agentmesh_common import MetricFactory
from agentmesh_gateway.app import build_adapters
from agentmesh_gateway.cache import CacheBackend, ResponseCache
from agentmesh_gateway.domain import GenerateCall
from agentmesh_gateway.gateway import Gateway, RetryPolicy
from agentmesh_gateway.observability import GatewayMetrics
from agentmesh_gateway.routes import load_routes


def _load_fakes() -> None:
    if "agentmesh_gateway_fakes" in sys.modules:
        return
    root = Path(__file__).parent / "fakes"
    spec = importlib.util.spec_from_file_location(
        "agentmesh_gateway_fakes", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["agentmesh_gateway_fakes"] = module
    spec.loader.exec_module(module)


_load_fakes()

from agentmesh_gateway_fakes.server import FakeProvider  # noqa: E402


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    server = await FakeProvider().start()
    yield server
    await server.stop()


@pytest.fixture
async def fake2() -> AsyncIterator[FakeProvider]:
    server = await FakeProvider().start()
    yield server
    await server.stop()


class Harness:
    """A gateway built from a routes YAML, with spans and metrics captured."""

    def __init__(self, gateway: Gateway, spans: InMemorySpanExporter, registry: CollectorRegistry):
        self.gateway = gateway
        self.spans = spans
        self.registry = registry

    async def run(self, call: GenerateCall) -> list[Any]:
        return [event async for event in self.gateway.generate(call)]

    def metric(self, name: str, labels: dict[str, str]) -> float:
        value = self.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
async def harness(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Harness]]:
    built: list[Gateway] = []
    adapters_list: list[Any] = []

    def make(
        routes_yaml: str,
        env: dict[str, str] | None = None,
        cache: CacheBackend | None = None,
        **retry: Any,
    ) -> Harness:
        path = tmp_path / f"routes{len(built)}.yaml"
        path.write_text(routes_yaml)
        table = load_routes(path, env or {})
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        registry = CollectorRegistry()
        adapters = build_adapters(provider, "127.0.0.1:1")
        adapters_list.append(adapters)
        policy = RetryPolicy(
            base_delay=retry.get("base_delay", 0.005),
            max_delay=0.05,
            max_rate_limit_wait=retry.get("max_rate_limit_wait", 5.0),
        )
        metrics = GatewayMetrics(MetricFactory(registry))
        gateway = Gateway(
            table,
            adapters,
            metrics=metrics,
            tracer=provider.get_tracer("test"),
            retry=policy,
            cache=ResponseCache(cache, metrics) if cache is not None else None,
        )
        built.append(gateway)
        return Harness(gateway, exporter, registry)

    yield make
    for adapters in adapters_list:
        for adapter in adapters.values():
            await adapter.aclose()
