"""Rate limits per deployment and per tenant, on a fake clock: a full deployment is skipped
for the next one, callers that allow it wait for the window, others get RESOURCE_EXHAUSTED
with a retry delay."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.calls import ask, finished
from agentmesh_gateway_fakes.server import FakeProvider, Stream
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from agentmesh_common import MetricFactory, ResourceExhausted
from agentmesh_gateway.app import build_adapters
from agentmesh_gateway.gateway import Gateway
from agentmesh_gateway.observability import GatewayMetrics
from agentmesh_gateway.routes import load_routes


class FakeTime:
    def __init__(self) -> None:
        self.now = 5000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def gateway(tmp_path: Path, yaml: str, time: FakeTime) -> Gateway:
    path = tmp_path / "routes.yaml"
    path.write_text(yaml)
    provider = TracerProvider()
    return Gateway(
        load_routes(path, {}),
        build_adapters(provider, "127.0.0.1:1"),
        metrics=GatewayMetrics(MetricFactory(CollectorRegistry())),
        tracer=provider.get_tracer("test"),
        clock=time.clock,
        sleep=time.sleep,
    )


OK = Stream(wire.sse(*wire.openai_text(), done=True))


async def run(gw: Gateway, **changes: object) -> list[object]:
    return [e async for e in gw.generate(replace(ask(), **changes))]  # type: ignore[arg-type]


async def test_a_full_deployment_is_skipped_for_the_next_one(
    fake: FakeProvider, fake2: FakeProvider, tmp_path: Path
) -> None:
    fake.default = OK
    fake2.default = OK
    time = FakeTime()
    gw = gateway(
        tmp_path,
        f"""
routes:
  main:
    - {{name: small, provider: openai_compatible, model: m, base_url: '{fake.url}', rpm: 1}}
    - {{name: big, provider: openai_compatible, model: m, base_url: '{fake2.url}', priority: 1}}
""",
        time,
    )
    assert finished(await run(gw)).deployment == "small"
    assert finished(await run(gw)).deployment == "big"
    assert not time.slept


async def test_waiting_callers_wait_for_the_window_others_get_retry_info(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.default = OK
    time = FakeTime()
    yaml = f"""
tenants:
  acme: {{rpm: 0, tpm: 150}}
routes:
  main:
    - {{name: only, provider: openai_compatible, model: m, base_url: '{fake.url}', rpm: 1}}
"""
    gw = gateway(tmp_path, yaml, time)
    await run(gw)
    with pytest.raises(ResourceExhausted) as caught:
        await run(gw, fail_fast_on_rate_limit=True)
    assert caught.value.reason == "DEPLOYMENT_RATE_LIMITED"
    assert caught.value.retry_after == 60
    time.now += 30
    events = await run(gw)  # waits the 30 s left, then is served
    assert time.slept == [30]
    assert finished(events).deployment == "only"

    # tenant tokens per minute: the first call's real usage (120) is what counts
    time.now += 60
    await run(gw, tenant="acme")
    time.now += 60  # the deployment's rpm window is free again, the tenant's too
    await run(gw, tenant="acme")
    with pytest.raises(ResourceExhausted) as caught:
        await run(gw, tenant="acme", fail_fast_on_rate_limit=True)
    assert caught.value.reason == "TENANT_RATE_LIMITED"
    assert 0 < (caught.value.retry_after or 0) <= 60
