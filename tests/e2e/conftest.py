"""End-to-end fixtures: the four services as separate processes, and a scripted model provider.

`ScriptedProvider` speaks OpenAI's Chat Completions streaming format exactly (SSE chunks,
tool-call fragments, a final usage chunk, `[DONE]`) and answers each request from a script
keyed on the conversation, as a real model would answer an agent. The gateway reaches it as an
`openai_compatible` deployment; the route `tiny` goes to the local runner's demo model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agentmesh_cli.mesh import (
    GATEWAY,
    MEMORY,
    ORCHESTRATOR,
    RUNNER,
    WEB,
    ServiceProcess,
    create_api_key,
    start_mesh,
    stop_mesh,
)
from agentmesh_client.client import AgentmeshClient
from tests.timing import scaled

Chat = dict[str, Any]


@dataclass(frozen=True)
class Answer:
    """What the scripted model says to one request."""

    text: str = ""
    tool_calls: Sequence[tuple[str, dict[str, Any]]] = ()
    delay_seconds: float = 0.0
    # An HTTP error status instead of an answer (with OpenAI's error body).
    status: int = 200


def system_of(chat: Chat) -> str:
    return next((m["content"] for m in chat["messages"] if m["role"] == "system"), "")


def last_user(chat: Chat) -> str:
    return next((m["content"] for m in reversed(chat["messages"]) if m["role"] == "user"), "")


@dataclass
class ScriptedProvider:
    """An OpenAI-format streaming server answering from `script`."""

    script: Callable[[Chat], Answer]
    requests: list[Chat] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> ScriptedProvider:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        chat: Chat = await request.json()
        self.requests.append(chat)
        answer = self.script(chat)
        if answer.status != 200:
            error = {"message": answer.text or "scripted failure", "type": "server_error"}
            return web.json_response({"error": error}, status=answer.status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = 1_763_700_000
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            payload = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        words = answer.text.split(" ") if answer.text else []
        for i, word in enumerate(words):
            if answer.delay_seconds:
                await asyncio.sleep(answer.delay_seconds / len(words))
            await send({"content": word if i == 0 else " " + word})
        for index, (name, arguments) in enumerate(answer.tool_calls):
            text = json.dumps(arguments)
            await send(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": f"call_{index}",
                            "type": "function",
                            "function": {"name": name, "arguments": text[: len(text) // 2]},
                        }
                    ]
                }
            )
            await send(
                {
                    "tool_calls": [
                        {"index": index, "function": {"arguments": text[len(text) // 2 :]}}
                    ]
                }
            )
        await send({}, "tool_calls" if answer.tool_calls else "stop")
        prompt = sum(len(str(m.get("content") or "")) // 4 + 4 for m in chat["messages"])
        completion = max(len(answer.text) // 4, 1)
        usage = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": chat["model"],
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response


def routes_file(path: Path, provider_port: int, runner: ServiceProcess | None) -> Path:
    """Route `default` to the scripted provider, `tiny` to the runner's demo model."""
    lines = [
        "routes:",
        "  default:",
        "    - name: scripted",
        "      provider: openai_compatible",
        "      model: scripted-1",
        f"      base_url: http://127.0.0.1:{provider_port}/v1",
        "      input_price_per_million: 1.0",
        "      output_price_per_million: 2.0",
        "      max_retries: 0",
    ]
    if runner is not None:
        lines += [
            "  tiny:",
            "    - name: tiny",
            "      provider: local",
            "      model: tiny",
            f"      base_url: {runner.address}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Mesh:
    """The four services running as processes, plus the scripted provider."""

    services: dict[str, ServiceProcess]
    provider: ScriptedProvider
    api_key: str
    data_dir: Path

    @property
    def orchestrator(self) -> ServiceProcess:
        return self.services[ORCHESTRATOR.name]

    @property
    def web_url(self) -> str:
        """The web edge's base URL (only for a mesh started with ``web=True``)."""
        url = self.services[WEB.name].http_url
        assert url is not None, "the web edge announced no HTTP port"
        return url

    def client(self, orchestrator: ServiceProcess | None = None) -> AgentmeshClient:
        target = (orchestrator or self.orchestrator).address
        return AgentmeshClient(target, api_key=self.api_key, timeout=20)


ORCHESTRATOR_ENV = {
    "AGENTMESH_ORCHESTRATOR_METRICS_PORT": "0",
    "AGENTMESH_ORCHESTRATOR_REQUESTS_PER_MINUTE": "0",
    "AGENTMESH_ORCHESTRATOR_TOKENS_PER_MINUTE": "0",
    "AGENTMESH_ORCHESTRATOR_LEASE_TTL_SECONDS": "2",
    "AGENTMESH_ORCHESTRATOR_TAKEOVER_INTERVAL_SECONDS": "0.5",
}


async def start_e2e_mesh(
    tmp_path: Path,
    script: Callable[[Chat], Answer],
    *,
    runner: bool = True,
    web: dict[str, str] | None = None,
    orchestrator: dict[str, str] | None = None,
    memory: dict[str, str] | None = None,
    provider: ScriptedProvider | None = None,
) -> Mesh:
    """The services as processes: memory, the runner (unless ``runner=False``), gateway,
    orchestrator, and the web edge with the environment ``web`` when that is given. The model
    provider is a `ScriptedProvider` of ``script``, or ``provider`` (not yet started)."""
    provider = await (provider or ScriptedProvider(script)).start()
    specs = (MEMORY, RUNNER, GATEWAY, ORCHESTRATOR, WEB)
    ports = {spec.name: 0 for spec in specs}
    metrics = {spec.name: {f"{spec.env_prefix}METRICS_PORT": "0"} for spec in specs}
    # The runner must be up before the routes file can name its address.
    first = await start_mesh(
        tmp_path,
        ports=ports,
        specs=(MEMORY, RUNNER) if runner else (MEMORY,),
        extra_env=metrics | {MEMORY.name: {**metrics[MEMORY.name], **(memory or {})}},
    )
    services = {s.spec.name: s for s in first}
    try:
        routes = routes_file(tmp_path / "routes.yaml", provider.port, services.get(RUNNER.name))
        extra = {
            GATEWAY.name: {**metrics[GATEWAY.name], "AGENTMESH_GATEWAY_ROUTES_FILE": str(routes)},
            ORCHESTRATOR.name: {
                **ORCHESTRATOR_ENV,
                "AGENTMESH_ORCHESTRATOR_MEMORY_TARGET": services[MEMORY.name].address,
                "AGENTMESH_ORCHESTRATOR_REPLICA_ID": "replica-a",
                **(orchestrator or {}),
            },
            WEB.name: {**metrics[WEB.name], "AGENTMESH_WEB_HTTP_PORT": "0", **(web or {})},
        }
        rest = await start_mesh(
            tmp_path,
            ports=ports,
            specs=(GATEWAY, ORCHESTRATOR, WEB) if web is not None else (GATEWAY, ORCHESTRATOR),
            extra_env=extra,
        )
    except BaseException:
        await stop_mesh(first)
        await provider.stop()
        raise
    services.update({s.spec.name: s for s in rest})
    key = await create_api_key(services[MEMORY.name].address, "e2e", "e2e")
    return Mesh(services, provider, key, tmp_path)


async def stop_e2e_mesh(mesh: Mesh, extra: Sequence[ServiceProcess] = ()) -> None:
    specs = (WEB, ORCHESTRATOR, GATEWAY, RUNNER, MEMORY)
    order = [*extra, *(mesh.services[s.name] for s in specs if s.name in mesh.services)]
    for service in order:
        await service.stop()
    await mesh.provider.stop()


@pytest.fixture
async def mesh_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[[Callable[[Chat], Answer]], Any]]:
    started: list[Mesh] = []

    async def factory(script: Callable[[Chat], Answer]) -> Mesh:
        mesh = await start_e2e_mesh(tmp_path, script)
        started.append(mesh)
        return mesh

    yield factory
    for mesh in started:
        await stop_e2e_mesh(mesh)


# -- the `agentmesh` command line as a real process ------------------------------------------

AGENTMESH = str(Path(sys.executable).parent / "agentmesh")
#: A fixed terminal for the live view: 120 columns, no TTY (stdout is a pipe).
CLI_ENV = {"COLUMNS": "120", "LINES": "60", "NO_COLOR": "1", "TERM": "dumb"}
#: `up` passes its environment on to the services: the tests make more than the default 20
#: public RPCs a minute on one tenant, so the per-tenant limits are off.
UP_ENV = {
    "AGENTMESH_ORCHESTRATOR_REQUESTS_PER_MINUTE": "0",
    "AGENTMESH_ORCHESTRATOR_TOKENS_PER_MINUTE": "0",
}


class ThreadedProvider:
    """A `ScriptedProvider` on its own event loop in a thread, so that tests can block on
    subprocesses (the CLI, node) while it answers."""

    def __init__(self, script: Callable[[Chat], Answer]) -> None:
        self.provider = ScriptedProvider(script)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ScriptedProvider:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.provider.start(), self._loop).result(10)
        return self.provider

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.provider.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class MeshUp:
    """`agentmesh up` running as a process, and what it wrote to `<data dir>/mesh.json`."""

    process: subprocess.Popen[str]
    data_dir: Path
    state: dict[str, Any]
    api_key: str

    @property
    def target(self) -> str:
        return str(self.state["orchestrator"])

    @property
    def pids(self) -> list[int]:
        return [int(s["pid"]) for s in self.state["services"].values()]

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a CLI call against this mesh."""
        return {
            **os.environ,
            **CLI_ENV,
            "AGENTMESH_TARGET": self.target,
            "AGENTMESH_API_KEY": self.api_key,
            **overrides,
        }

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `agentmesh ARGS` against this mesh and wait for it."""
        return subprocess.run(
            [AGENTMESH, *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def cli_all(
        self, *commands: tuple[Sequence[str], dict[str, str]]
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run independent `agentmesh` commands (args, extra env) at once; results in order."""
        with ThreadPoolExecutor(len(commands)) as pool:
            futures = [pool.submit(self.cli, *args, **env) for args, env in commands]
            return [future.result() for future in futures]

    def stop(self, sig: int = signal.SIGINT, within_seconds: float = 20) -> tuple[int, str]:
        """Signal `up`, wait for it (`within_seconds`, scaled to the machine); returns (exit
        code, its whole output). If it does not stop, it and every service it started are
        killed, so a failing test leaves nothing running."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            out, _ = self.process.communicate(timeout=scaled(within_seconds))
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
            reap(self.data_dir)
        return self.process.returncode, out


def start_up(
    data_dir: Path,
    *args: str,
    within_seconds: float = 45,
    port_base: int = 0,
    env: Mapping[str, str] = UP_ENV,
) -> MeshUp:
    """`agentmesh up --data-dir DIR --port-base N ARGS`; returns once mesh.json is written.
    `env` is given to the services (by default: no per-tenant rate limits). `within_seconds`
    is for a quiet machine and is scaled to this one; if `up` does not come up in time, it and
    every service it had started are killed."""
    state_file = data_dir / "mesh.json"
    process = subprocess.Popen(
        [AGENTMESH, "up", "--data-dir", str(data_dir), "--port-base", str(port_base), *args],
        env={**os.environ, **CLI_ENV, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + scaled(within_seconds)
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, _ = process.communicate()
            reap(data_dir)
            raise AssertionError(f"agentmesh up did not come up:\n{out}")
        time.sleep(0.1)
    state = json.loads(state_file.read_text())
    api_key = Path(state["api_key_file"]).read_text().strip()
    return MeshUp(process, data_dir, state, api_key)


def free_port_block(size: int) -> int:
    """The first port of `size` consecutive free ports (for `up --port-base`)."""
    for base in range(41000, 60000, 97):
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError("no free port block")


def processes_using(data_dir: Path) -> list[int]:
    """Pids of live processes whose environment names `data_dir` (services `up` started)."""
    needle = str(data_dir).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().split(") ", 1)[1].split(" ", 1)[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(int(proc.name))
    return found


def reap(data_dir: Path, within_seconds: float = 10) -> None:
    """Stop every service an `up` on `data_dir` started (after that `up` was killed): they stop
    by themselves when their parent dies; whatever is left after `within_seconds` is killed."""
    deadline = time.monotonic() + scaled(within_seconds)
    while processes_using(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in processes_using(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def scripted_routes(path: Path, provider_port: int) -> Path:
    """`default` -> the scripted provider; `tiny` -> the runner `up` started (no address)."""
    path.write_text(
        "routes:\n"
        "  default:\n"
        "    - name: scripted\n"
        "      provider: openai_compatible\n"
        "      model: scripted-1\n"
        f"      base_url: http://127.0.0.1:{provider_port}/v1\n"
        "      input_price_per_million: 1.0\n"
        "      output_price_per_million: 2.0\n"
        "      max_retries: 0\n"
        "  tiny:\n"
        "    - name: tiny\n"
        "      provider: local\n"
        "      model: tiny\n"
    )
    return path


# -- one `agentmesh up` for the CLI and TypeScript client tests --------------------------------

PLAN = {
    "rationale": "two steps",
    "tasks": [
        {"id": "draft", "description": "Draft a greeting"},
        {"id": "polish", "description": "Polish the greeting", "depends_on": ["draft"]},
    ],
}


def cli_script(chat: Chat) -> Answer:
    """The scripted provider of `agentmesh up`: router, planner and writer answers, a slow
    answer for goals that say "slowly", else "<speaker> says hello"."""
    system, user = system_of(chat), last_user(chat)
    if "Classify the goal" in system:
        return Answer(text=json.dumps({"kind": "simple", "reason": "one agent can answer"}))
    if "You are a planner" in system:
        return Answer(text=json.dumps(PLAN))
    if "You are a writer" in system:
        return Answer(text="Hello, [bold]team[/bold]! The greeting is ready.")
    if "You keep notes" in system:  # a READ_WRITE tool call that waits for approval
        tool = next((m for m in chat["messages"] if m["role"] == "tool"), None)
        if tool is None:
            return Answer(tool_calls=[("memory_write", {"key": "budget", "value": 1200})])
        return Answer(text=f"noted: {tool['content']}")
    if "slowly" in user or "slowly" in system:
        return Answer(text=" ".join(["word"] * 40), delay_seconds=30)
    who = re.search(r"You are (\w+)\.", system)
    return Answer(text=f"{who.group(1) if who else 'assistant'} says hello", delay_seconds=0.3)


@pytest.fixture(scope="package")
def provider() -> Iterator[ScriptedProvider]:
    with ThreadedProvider(cli_script) as running:
        yield running


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory, provider: ScriptedProvider) -> Iterator[MeshUp]:
    data_dir = tmp_path_factory.mktemp("up")
    routes = scripted_routes(data_dir / "routes.yaml", provider.port)
    up = start_up(data_dir, "--routes", str(routes))
    yield up
    code, out = up.stop(signal.SIGTERM)
    assert code == 0, out
    assert not [pid for pid in up.pids if alive(pid)], "every service stopped"
