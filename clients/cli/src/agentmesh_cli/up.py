"""`agentmesh up`: the embedded default, every service on localhost until Ctrl-C.

Ports with `--port-base N` (0: every one free):

    gRPC        orchestrator N, gateway N+1, runner N+2, memory N+3, web N+4
    HTTP        the web UI N+5, the gateway's OpenAI/Anthropic-compatible API N+6
    metrics     N+10 .. N+14, in the gRPC order (METRICS_OFFSET)

Without it: gRPC 50051-50055, HTTP 8080 and 4000, metrics 9461-9465. `--prometheus FILE`
writes a Prometheus scrape config for the metrics ports it started. The local tenant's key
(`<data dir>/api-key`) is not rate limited (`AGENTMESH_ORCHESTRATOR_UNTHROTTLED_TENANTS`);
tenants made with `agentmesh keys create` keep the limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
import yaml

from agentmesh_client.errors import AgentmeshError

from .demo import run_demo
from .mesh import (
    GATEWAY,
    MEMORY,
    ORCHESTRATOR,
    SERVICES,
    WEB,
    ServiceProcess,
    create_api_key,
    start_mesh,
    stop_mesh,
)
from .shared import CliError, console, default_data_dir, errors, fail, one_line, run

#: The tenant of the key `up` creates for its user.
LOCAL_TENANT = "local"
#: With `--port-base N`, the metrics ports are N+10 .. N+14 (orchestrator, gateway, runner,
#: memory, web).
METRICS_OFFSET = 10
#: With `--port-base N`, the gateway's OpenAI-compatible HTTP API listens on N+6.
GATEWAY_HTTP_OFFSET = 6
HIGHEST_PORT_BASE = 65535 - METRICS_OFFSET - len(SERVICES) + 1


def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="where to keep state, logs, the API key and mesh.json "
            "[env: AGENTMESH_DATA_DIR; default: .data]"
        ),
    ] = None,
    port_base: Annotated[
        int | None,
        typer.Option(
            help="ports from here: gRPC orchestrator N, gateway N+1, runner N+2, memory N+3, "
            "web N+4; HTTP: the web UI N+5, the gateway's OpenAI-compatible API N+6; metrics "
            "N+10..N+14 in the gRPC order. 0 binds every port free. Default: 50051-50055, "
            "HTTP 8080 and 4000, metrics 9461-9465."
        ),
    ] = None,
    routes: Annotated[
        Path | None,
        typer.Option(help="routes file for the gateway (default: the local runner, SmolLM2)"),
    ] = None,
    prometheus: Annotated[
        Path | None,
        typer.Option(help="write a Prometheus scrape config for the services' metrics here"),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="run an example session once the mesh is up")
    ] = False,
) -> None:
    """Start memory, local runner, gateway, orchestrator and the web edge on localhost until
    Ctrl-C.

    Shows each service as it becomes ready; writes <data-dir>/mesh.json (every address, the
    metrics ports, the UI's URL, the pids, the API key file) while running, which every other
    command reads to find the mesh.
    """
    data_dir = (data_dir or default_data_dir()).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if port_base is not None and not 0 <= port_base <= HIGHEST_PORT_BASE:
        raise fail(f"--port-base must be between 0 and {HIGHEST_PORT_BASE}")
    if routes is not None and not routes.is_file():
        raise fail(f"--routes: {routes} is not a file")
    run(
        _up(
            data_dir,
            port_base,
            routes.resolve() if routes else None,
            prometheus.resolve() if prometheus else None,
            demo=demo,
        )
    )


def mesh_layout(
    port_base: int | None, routes: Path | None
) -> tuple[dict[str, int] | None, dict[str, dict[str, str]]]:
    """The ports and extra environment `agentmesh up` gives each service."""
    extra: dict[str, dict[str, str]] = {spec.name: {} for spec in SERVICES}
    # The local tenant is the one user of this machine: scripting the CLI must not hit the
    # per-tenant limits meant for shared meshes. An explicit setting wins.
    unthrottled = "AGENTMESH_ORCHESTRATOR_UNTHROTTLED_TENANTS"
    if unthrottled not in os.environ:
        extra[ORCHESTRATOR.name][unthrottled] = LOCAL_TENANT
    ports: dict[str, int] | None = None
    if port_base is not None:
        by_default_port = sorted(SERVICES, key=lambda spec: spec.default_port)
        ports = {
            spec.name: 0 if port_base == 0 else port_base + i
            for i, spec in enumerate(by_default_port)
        }
        for i, spec in enumerate(by_default_port):
            metrics = 0 if port_base == 0 else port_base + METRICS_OFFSET + i
            extra[spec.name][f"{spec.env_prefix}METRICS_PORT"] = str(metrics)
        http_port = 0 if port_base == 0 else port_base + len(SERVICES)
        extra[WEB.name][f"{WEB.env_prefix}HTTP_PORT"] = str(http_port)
        gateway_http = 0 if port_base == 0 else port_base + GATEWAY_HTTP_OFFSET
        extra[GATEWAY.name][f"{GATEWAY.env_prefix}HTTP_PORT"] = str(gateway_http)
    if routes is not None:
        extra[GATEWAY.name][f"{GATEWAY.env_prefix}ROUTES_FILE"] = str(routes)
    return ports, extra


def _ready(service: ServiceProcess, seconds: float) -> None:
    console.print(f"  {service.spec.name:<18} ready in {seconds:4.1f}s  {service.address}")


async def _up(
    data_dir: Path,
    port_base: int | None,
    routes: Path | None,
    prometheus: Path | None,
    *,
    demo: bool = False,
) -> None:
    console.print(f"starting agentmesh (data in {data_dir}) …")
    ports, extra = mesh_layout(port_base, routes)
    loop = asyncio.get_running_loop()
    starting = asyncio.current_task()
    assert starting is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, starting.cancel)
    interrupted = CliError("interrupted while starting; nothing is left running")
    try:
        running = await start_mesh(data_dir, ports=ports, extra_env=extra, on_ready=_ready)
    except asyncio.CancelledError:
        # start_mesh has stopped whatever had started.
        starting.uncancel()
        raise interrupted from None
    state_file = data_dir / "mesh.json"
    key_file = data_dir / "api-key"
    try:
        try:
            if not key_file.exists():
                secret = await _create_local_key(running)
                key_file.write_text(secret + "\n")
                key_file.chmod(0o600)
        except asyncio.CancelledError:
            # The signal came after the services started but before serving: the finally
            # below stops them, and the user sees the same one line.
            starting.uncancel()
            raise interrupted from None
        # No await from here until _serve replaces the signal handlers: a signal arriving
        # meanwhile is handled by _serve's, an ordinary stop.
        _record(running, state_file, key_file, prometheus)
        _summary(running, data_dir, key_file, state_file, prometheus, routes)
        await _serve(running, data_dir, key_file.read_text().strip(), demo=demo)
    finally:
        console.print("stopping …")
        await stop_mesh(running)
        state_file.unlink(missing_ok=True)
        console.print("stopped")


async def _create_local_key(running: list[ServiceProcess]) -> str:
    """A new API key of the local tenant (made once per data directory)."""
    memory = next(s for s in running if s.spec is MEMORY)
    return await create_api_key(memory.address, LOCAL_TENANT, "agentmesh up")


def _record(
    running: list[ServiceProcess], state_file: Path, key_file: Path, prometheus: Path | None
) -> None:
    """Write mesh.json (and the scrape config): small local files, before serving."""
    if prometheus is not None:
        prometheus.parent.mkdir(parents=True, exist_ok=True)
        prometheus.write_text(scrape_config(running))
    state = mesh_state(running, key_file, prometheus)
    state_file.write_text(json.dumps(state, indent=2) + "\n")


def _summary(
    running: list[ServiceProcess],
    data_dir: Path,
    key_file: Path,
    state_file: Path,
    prometheus: Path | None,
    routes: Path | None,
) -> None:
    console.print("agentmesh is up")
    for service in running:
        metrics = f"metrics :{service.metrics_port}" if service.metrics_port else ""
        http = service.http_url or ""
        pid = f"pid {service.process.pid}" if service.process else ""
        parts = (service.spec.name.ljust(18), service.address.ljust(16), http, metrics, pid)
        console.print("  " + "  ".join(part for part in parts if part))
    console.print(
        f"API key (tenant {LOCAL_TENANT}, not rate limited): {key_file.read_text().strip()}"
    )
    web = next(s for s in running if s.spec is WEB)
    console.print(f"UI: {web.http_url}/  (sign in with the API key)", highlight=False)
    console.print(f"mesh: {state_file}  ·  logs: {data_dir / 'logs'}")
    if prometheus is not None:
        console.print(f"Prometheus scrape config: {prometheus}")
    data = "" if data_dir == (Path.cwd() / ".data") else f"AGENTMESH_DATA_DIR={data_dir} "
    console.print(f'try: {data}agentmesh run "Say hello"', highlight=False)
    if routes is None:
        console.print(
            "Route default is SmolLM2-135M-Instruct on the local runner: small, it answers"
            " simple questions well and reasons poorly (see the README)."
        )


async def _serve(
    running: list[ServiceProcess], data_dir: Path, api_key: str, *, demo: bool
) -> None:
    """Until Ctrl-C, SIGTERM, or a service exiting (an error)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exits = [asyncio.create_task(s.process.wait()) for s in running if s.process]
    waiter = asyncio.create_task(stop.wait())
    orchestrator = next(s for s in running if s.spec is ORCHESTRATOR)
    example = asyncio.create_task(_demo(orchestrator.address, api_key, stop)) if demo else None
    done, _ = await asyncio.wait([waiter, *exits], return_when=asyncio.FIRST_COMPLETED)
    for task in [waiter, *exits, *([example] if example else [])]:
        task.cancel()
    if waiter not in done:
        dead = [s.spec.name for s in running if s.process and s.process.returncode is not None]
        raise CliError(f"{', '.join(dead)} exited; stopped the mesh (logs in {data_dir / 'logs'})")


async def _demo(target: str, api_key: str, stop: asyncio.Event) -> None:
    """The example session of `up --demo`; a failure is one line and the mesh keeps serving."""
    try:
        await run_demo(target, api_key, console)
    except AgentmeshError as exc:
        errors.print(f"example session failed: {one_line(exc)}", markup=False)
        return
    if not stop.is_set():
        console.print("agentmesh keeps running; press Ctrl-C to stop it")


def mesh_state(
    running: list[ServiceProcess], key_file: Path, prometheus: Path | None = None
) -> dict[str, object]:
    """What `mesh.json` says while `up` runs: how every command finds the mesh."""
    services = {
        s.spec.name: {
            "address": s.address,
            "metrics_port": s.metrics_port,
            "pid": s.process.pid if s.process else None,
            "http": s.http_url,
        }
        for s in running
    }
    web = next(s for s in running if s.spec is WEB)
    return {
        "orchestrator": services[ORCHESTRATOR.name]["address"],
        "memory": services[MEMORY.name]["address"],
        "web": web.http_url,
        "api_key_file": str(key_file),
        "tenant": LOCAL_TENANT,
        "pid": os.getpid(),
        "services": services,
        "openai_base_url": _openai_base_url(running),
        "prometheus_config": str(prometheus) if prometheus else None,
    }


def scrape_config(running: list[ServiceProcess]) -> str:
    """A Prometheus config scraping each started service's metrics port (as deploy/prometheus
    does for compose: one job per service, labelled `service`)."""
    jobs = [
        {
            "job_name": s.spec.name,
            "static_configs": [
                {"targets": [f"127.0.0.1:{s.metrics_port}"], "labels": {"service": s.spec.name}}
            ],
        }
        for s in running
        if s.metrics_port
    ]
    config = {"global": {"scrape_interval": "15s"}, "scrape_configs": jobs}
    header = "# Written by `agentmesh up` for the services it started; valid while it runs.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def _openai_base_url(running: list[ServiceProcess]) -> str | None:
    """What an OpenAI SDK is given as base URL: the gateway's HTTP API (Anthropic's: no /v1)."""
    gateway = next((s for s in running if s.spec is GATEWAY), None)
    return f"{gateway.http_url}/v1" if gateway is not None and gateway.http_url else None
