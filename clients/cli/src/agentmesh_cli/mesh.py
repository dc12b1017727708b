"""Start the agentmesh services as child processes on localhost, and stop them cleanly.

`start_mesh` starts memory, local runner, gateway, orchestrator and the web edge side by side,
each wired to the others' ports (picked before any starts), waits for every health check to
answer SERVING, and writes their logs to `<data dir>/logs/<service>.log`; `stop_mesh` stops
them callers first (web, orchestrator, gateway, runner, memory). If a service fails to start,
what had started is stopped. Every service exits by itself if the process that started it
dies (`AGENTMESH_PARENT_PID`), so a killed `agentmesh up` leaves no orphans. `agentmesh up`
(and so `make run`) is built on these.

`ServiceProcess` is also what the test suite uses to run each service as a real process: it
reads the bound port from the service's "service started" log line, so port 0 works (and the
web edge's HTTP port from its "http started" line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY


@dataclass(frozen=True)
class ServiceSpec:
    """How to launch one service."""

    name: str
    module: str
    env_prefix: str
    default_port: int
    default_metrics_port: int


MEMORY = ServiceSpec("memory", "agentmesh_memory", "AGENTMESH_MEMORY_", 50054, 9464)
RUNNER = ServiceSpec("local-runner", "agentmesh_runner", "AGENTMESH_RUNNER_", 50053, 9463)
GATEWAY = ServiceSpec("inference-gateway", "agentmesh_gateway", "AGENTMESH_GATEWAY_", 50052, 9462)
ORCHESTRATOR = ServiceSpec(
    "orchestrator", "agentmesh_orchestrator", "AGENTMESH_ORCHESTRATOR_", 50051, 9461
)
WEB = ServiceSpec("web", "agentmesh_web", "AGENTMESH_WEB_", 50055, 9465)
#: Start order: every service after the ones it calls.
SERVICES: tuple[ServiceSpec, ...] = (MEMORY, RUNNER, GATEWAY, ORCHESTRATOR, WEB)
#: The gateway's OpenAI/Anthropic-compatible HTTP API when the gateway has its default port.
GATEWAY_HTTP_PORT = 4000


class ServiceStartError(RuntimeError):
    """A service exited or stayed silent before reporting that it started.

    `str()` is one line: the service, what happened, and the service's own error; `output`
    keeps the last lines it printed.
    """

    def __init__(self, message: str, output: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.output = tuple(output)


def service_error(output: Sequence[str]) -> str:
    """The service's own error from its last output lines: the last ERROR record's exception
    (or message), else the last line that is not a JSON log record."""
    for line in reversed(output):
        record = _json_record(line)
        if record is None or record.get("level") not in ("ERROR", "CRITICAL"):
            continue
        exc_info = record.get("exc_info")
        if isinstance(exc_info, str) and exc_info.strip():
            return exc_info.strip().splitlines()[-1]
        return str(record.get("message", ""))
    plain = [line.strip() for line in output if line.strip() and _json_record(line) is None]
    return plain[-1] if plain else ""


def _json_record(line: str) -> dict[str, object] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@dataclass
class ServiceProcess:
    """One service running as a child process."""

    spec: ServiceSpec
    env: Mapping[str, str]
    log_path: Path | None = None
    process: asyncio.subprocess.Process | None = None
    port: int = 0
    metrics_port: int | None = None
    http_port: int | None = None
    recent_output: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    _pump: asyncio.Task[None] | None = None
    _log_file: TextIO | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str | None:
        """The base URL of the service's HTTP listener, if it has one."""
        return f"http://127.0.0.1:{self.http_port}" if self.http_port is not None else None

    async def start(self, within_seconds: float = 60.0) -> None:
        """Launch the process and wait for its "service started" line."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("a", encoding="utf-8")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.spec.module,
            # It stops by itself if this process dies (agentmesh_common.runtime).
            env={**os.environ, **self.env, "AGENTMESH_PARENT_PID": str(os.getpid())},
            # Its own process group: a terminal's Ctrl-C reaches only the parent, which then
            # stops the services one by one in reverse dependency order.
            process_group=0,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        started: asyncio.Future[tuple[int, int | None]] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._read_output(started))
        try:
            self.port, self.metrics_port = await asyncio.wait_for(started, within_seconds)
        except (TimeoutError, ServiceStartError) as exc:
            await self.stop(grace=2.0)
            output = list(self.recent_output)
            cause = service_error(output)
            raise ServiceStartError(
                f"{self.spec.name} did not start ({exc or 'timed out'})"
                + (f": {cause}" if cause else ""),
                output,
            ) from None

    async def _read_output(self, started: asyncio.Future[tuple[int, int | None]]) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.recent_output.append(line)
            if self._log_file is not None:
                self._log_file.write(line + "\n")
                self._log_file.flush()
            if not started.done():
                http_port = _http_port(line)
                if http_port is not None:
                    self.http_port = http_port
                ports = parse_started_line(line)
                if ports is not None:
                    started.set_result(ports)
        if not started.done():
            code = await self.process.wait()
            started.set_exception(ServiceStartError(f"exited with code {code}"))

    async def wait_healthy(self, within_seconds: float = 30.0) -> None:
        """Poll the standard health service until it answers SERVING."""
        deadline = asyncio.get_running_loop().time() + within_seconds
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise ServiceStartError(f"{self.spec.name} never reported SERVING")
                await asyncio.sleep(0.1)

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._pump, 5.0)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.process.returncode


def parse_started_line(line: str) -> tuple[int, int | None] | None:
    """The (port, metrics_port) from a service's JSON "service started" log line, if it is one."""
    record = _json_record(line)
    if record is None or record.get("message") != "service started":
        return None
    port = record.get("port")
    metrics_port = record.get("metrics_port")
    if not isinstance(port, int):
        return None
    return port, metrics_port if isinstance(metrics_port, int) else None


def _http_port(line: str) -> int | None:
    record = _json_record(line)
    if record is None or record.get("message") != "http started":
        return None
    port = record.get("http_port")
    return port if isinstance(port, int) else None


def service_environment(
    spec: ServiceSpec, data_dir: Path, addresses: Mapping[str, str], port: int
) -> dict[str, str]:
    """The environment of one service, wired to the addresses of the others (by name)."""
    env = {f"{spec.env_prefix}PORT": str(port)}
    if spec is MEMORY:
        env[f"{spec.env_prefix}DATABASE_URL"] = f"sqlite+aiosqlite:///{data_dir / 'agentmesh.db'}"
    elif spec is RUNNER:
        env[f"{spec.env_prefix}MODELS_DIR"] = str(data_dir / "models")
    elif spec is GATEWAY and RUNNER.name in addresses:
        env[f"{spec.env_prefix}RUNNER_TARGET"] = addresses[RUNNER.name]
    elif spec is WEB and ORCHESTRATOR.name in addresses:
        env[f"{spec.env_prefix}ORCHESTRATOR_TARGET"] = addresses[ORCHESTRATOR.name]
    elif spec is ORCHESTRATOR:
        if MEMORY.name in addresses:
            env[f"{spec.env_prefix}MEMORY_TARGET"] = addresses[MEMORY.name]
        if GATEWAY.name in addresses:
            env[f"{spec.env_prefix}GATEWAY_TARGET"] = addresses[GATEWAY.name]
    if spec is GATEWAY and MEMORY.name in addresses:  # the HTTP API's keys and usage ledger
        env[f"{spec.env_prefix}MEMORY_TARGET"] = addresses[MEMORY.name]
        http_port = GATEWAY_HTTP_PORT if port == spec.default_port else 0
        env[f"{spec.env_prefix}HTTP_PORT"] = str(http_port)
    return env


def free_port() -> int:
    """A port no one listens on now (the kernel's pick for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_mesh(
    data_dir: Path,
    *,
    ports: Mapping[str, int] | None = None,
    specs: Sequence[ServiceSpec] = SERVICES,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
    on_ready: Callable[[ServiceProcess, float], None] | None = None,
) -> list[ServiceProcess]:
    """Start the services side by side, each wired to the others' ports, and wait until every
    one reports SERVING.

    `ports` maps service names to ports (0: a free one, picked here so that every service knows
    the others' addresses from the start; default: the service's own); `extra_env` adds
    variables per service name. The services connect to each other lazily, so none waits for
    another to start: start-up takes as long as the slowest, not the sum. `on_ready(service,
    seconds)` hears of each service as it answers SERVING, with the time since the start. On any
    failure, what started is stopped.
    """
    planned = {
        spec.name: (ports or {}).get(spec.name, spec.default_port) or free_port() for spec in specs
    }
    addresses = {name: f"127.0.0.1:{port}" for name, port in planned.items()}
    services: list[ServiceProcess] = []
    for spec in specs:
        env = service_environment(spec, data_dir, addresses, planned[spec.name])
        env.update((extra_env or {}).get(spec.name, {}))
        log = data_dir / "logs" / f"{spec.name}.log"
        services.append(ServiceProcess(spec, env, log_path=log))
    started = asyncio.get_running_loop().time()

    async def bring_up(service: ServiceProcess) -> None:
        await service.start()
        await service.wait_healthy()
        if on_ready is not None:
            on_ready(service, asyncio.get_running_loop().time() - started)

    try:
        await _all(bring_up(service) for service in services)
    except BaseException:
        await stop_mesh(services)
        raise
    return services


async def _all(steps: Iterable[Awaitable[None]]) -> None:
    """Run the steps side by side; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def create_api_key(memory_target: str, tenant: str, name: str) -> str:
    """Create an API key for `tenant` through the memory service; returns the secret."""
    async with grpc.aio.insecure_channel(memory_target) as channel:
        reply = await memory_pb2_grpc.MemoryServiceStub(channel).CreateApiKey(
            memory_pb2.CreateApiKeyRequest(display_name=name),
            metadata=((TENANT_METADATA_KEY, tenant),),
            timeout=10,
        )
    return reply.secret


async def stop_mesh(running: Sequence[ServiceProcess]) -> None:
    """Stop services in reverse start order."""
    for service in reversed(running):
        await service.stop()
