"""`agentmesh up --port-base N --prometheus FILE` with the default rate limits: every port pinned
(metrics at the documented N+10 offset), a scrape config for what it started, each service shown
as it became ready, commands that find it through the data dir, and the local key unthrottled
while a tenant made with `keys create` keeps the limits."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from agentmesh_client import AgentmeshClient, errors

from .conftest import (
    AGENTMESH,
    CLI_ENV,
    ScriptedProvider,
    free_port_block,
    scripted_routes,
    start_up,
)

pytestmark = pytest.mark.slow

#: In the order of their gRPC ports N..N+4; metrics on N+10..N+14.
SERVICES = ("orchestrator", "inference-gateway", "local-runner", "memory", "web")
#: A per-tenant limit that refills one request every 20 s, so a drained budget stays drained
#: while a command starts (the default, 20 a minute, refills one every 3 s).
REQUESTS_PER_MINUTE = 3


async def calls_until_limited(target: str, api_key: str, attempts: int) -> int:
    """How many `ListTools` calls succeed before a RateLimited error (all: `attempts`)."""
    succeeded = 0
    limited: errors.RateLimited | None = None
    async with AgentmeshClient(target, api_key=api_key, timeout=10) as client:
        while succeeded < attempts and limited is None:
            try:
                await client.list_tools()
                succeeded += 1
            except errors.RateLimited as err:
                limited = err
    if limited is not None:
        assert limited.reason == "TENANT_RATE_LIMITED"
        assert limited.retry_after
    return succeeded


@pytest.mark.timeout(240)
def test_up_pins_every_port_writes_a_scrape_config_and_throttles_only_tenants(
    tmp_path: Path, provider: ScriptedProvider
) -> None:
    base = free_port_block(15)
    data_dir = tmp_path / "pinned"
    scrape = tmp_path / "prometheus.yml"
    routes = scripted_routes(tmp_path / "routes.yaml", provider.port)
    up = start_up(
        data_dir,
        "--routes",
        str(routes),
        "--prometheus",
        str(scrape),
        port_base=base,
        env={"AGENTMESH_ORCHESTRATOR_REQUESTS_PER_MINUTE": str(REQUESTS_PER_MINUTE)},
    )
    try:
        services = up.state["services"]
        assert [services[name]["address"] for name in SERVICES] == [
            f"127.0.0.1:{base + i}" for i in range(5)
        ]
        assert [services[name]["metrics_port"] for name in SERVICES] == [
            base + 10 + i for i in range(5)
        ]
        assert up.state["web"] == f"http://127.0.0.1:{base + 5}"
        assert up.state["openai_base_url"] == f"http://127.0.0.1:{base + 6}/v1"

        config = yaml.safe_load(scrape.read_text())
        jobs = {job["job_name"]: job["static_configs"][0] for job in config["scrape_configs"]}
        assert set(jobs) == set(SERVICES)
        for i, name in enumerate(SERVICES):
            assert jobs[name]["targets"] == [f"127.0.0.1:{base + 10 + i}"]
            assert jobs[name]["labels"] == {"service": name}
        with urllib.request.urlopen(f"http://127.0.0.1:{base + 10}/metrics", timeout=10) as r:
            assert r.status == 200
            assert b"# TYPE" in r.read()

        # Found through the data dir alone: no target, key or memory address.
        env = {
            k: v for k, v in up.env().items() if k not in ("AGENTMESH_TARGET", "AGENTMESH_API_KEY")
        } | {"AGENTMESH_DATA_DIR": str(data_dir)}

        def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [AGENTMESH, *args],
                env=env | extra,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )

        created = cli("keys", "create", "--tenant", "scripted-tenant")
        assert created.returncode == 0, created.stderr
        tenant_key = created.stdout.strip()

        # The local key (up's own tenant) is not throttled, a tenant's is.
        local = asyncio.run(calls_until_limited(up.target, up.api_key, 10 * REQUESTS_PER_MINUTE))
        assert local == 10 * REQUESTS_PER_MINUTE
        models = cli("models", "--json")
        assert models.returncode == 0, models.stderr
        assert "default" in {m["route"] for m in json.loads(models.stdout)}
        limited = asyncio.run(calls_until_limited(up.target, tenant_key, 10 * REQUESTS_PER_MINUTE))
        assert limited == REQUESTS_PER_MINUTE
        refused = cli("tools", "--json", AGENTMESH_API_KEY=tenant_key)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: RESOURCE_EXHAUSTED TENANT_RATE_LIMITED")
    finally:
        code, out = up.stop()
    assert code == 0, out
    for name in SERVICES:
        assert re.search(
            rf"^  {re.escape(name)}\s+ready in\s+\d+\.\ds  127\.0\.0\.1:\d+$", out, re.M
        ), out
    assert out.index("ready in") < out.index("agentmesh is up")
    assert "tenant local, not rate limited" in out
    assert not (data_dir / "mesh.json").exists()


def test_port_base_leaves_room_for_the_metrics_ports(tmp_path: Path) -> None:
    result = subprocess.run(
        [AGENTMESH, "up", "--data-dir", str(tmp_path), "--port-base", "65530"],
        env=CLI_ENV | {"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--port-base must be between 0 and 65521" in result.stderr
