"""The servers under test, each a real separate process, and a :class:`Driver` for each.

* :func:`runner` starts the local runner (``ServiceProcess``), loads one model on a chosen
  backend and yields a :class:`RunnerDriver` (gRPC ``Generate`` streams). A backend the
  runner does not register raises :class:`Unavailable` instead of failing the benchmark.
* :func:`mlx_server` starts ``python -m mlx_lm.server`` and yields a :class:`ServerDriver`
  (streaming ``POST /v1/chat/completions``, server-sent events, usage from
  ``stream_options.include_usage``).

Both context managers stop their process on the way out, on error and cancellation too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import struct_pb2

from agentmesh.common.v1 import generation_pb2, messages_pb2
from agentmesh.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh_cli.mesh import RUNNER, ServiceProcess, ServiceStartError

from .workload import Message, Stream

__all__ = ["RunnerDriver", "ServerDriver", "Unavailable", "mlx_server", "runner"]

_ROLES = {
    "system": messages_pb2.ROLE_SYSTEM,
    "user": messages_pb2.ROLE_USER,
    "assistant": messages_pb2.ROLE_ASSISTANT,
}
_MLX_ENV = {"HF_HUB_OFFLINE": "1", "MLX_DISABLE_COMPILE": "1"}


class Unavailable(Exception):
    """An arm that cannot run here (its backend is not registered, or it failed to start)."""


class Rejected(Exception):
    """The server refused a request (for the runner: a gRPC status other than OK)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


# -- the local runner ------------------------------------------------------------------


class RunnerDriver:
    def __init__(self, label: str, stub: runner_pb2_grpc.LocalRunnerServiceAsyncStub, model: str):
        self.label = label
        self.model = model
        self._stub = stub

    async def stream(
        self,
        messages: Sequence[Message],
        max_tokens: int,
        *,
        schema: dict[str, Any] | None = None,
        cache_key: str = "",
    ) -> Stream:
        config = generation_pb2.GenerationConfig(max_tokens=max_tokens, temperature=0.0)
        if schema is not None:
            config.response_schema.CopyFrom(_struct(schema))
        request = runner_pb2.GenerateRequest(
            model=self.model,
            messages=[
                messages_pb2.Message(role=_ROLES[m.role], content=m.content) for m in messages
            ],
            config=config,
            cache_key=cache_key,
        )
        start = time.perf_counter()
        first: float | None = None
        finished = generation_pb2.Finished()
        try:
            async for response in self._stub.Generate(request, timeout=900):
                if response.event.HasField("delta"):
                    if first is None and response.event.delta.text:
                        first = time.perf_counter()
                elif response.event.HasField("finished"):
                    finished = response.event.finished
        except grpc.aio.AioRpcError as exc:
            raise Rejected(exc.code().name, exc.details() or "") from exc
        end = time.perf_counter()
        usage = finished.usage
        return Stream(
            ttft=(first or end) - start,
            seconds=end - start,
            completion_tokens=int(usage.completion_tokens),
            prompt_tokens=int(usage.prompt_tokens),
            cached_prompt_tokens=int(usage.cached_prompt_tokens),
            text=finished.text,
        )


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


@contextlib.asynccontextmanager
async def runner(
    models_dir: Path, model: str, backend: str, *, max_batch: int = 8, log: Path | None = None
) -> AsyncIterator[RunnerDriver]:
    """A runner process serving ``models_dir/model`` on ``backend``, loaded and warmed up."""
    env = {
        **_MLX_ENV,
        "AGENTMESH_RUNNER_PORT": "0",
        "AGENTMESH_RUNNER_METRICS_PORT": "",
        "AGENTMESH_RUNNER_MODELS_DIR": str(models_dir),
        "AGENTMESH_RUNNER_CREATE_DEMO_MODEL": "false",
        "AGENTMESH_RUNNER_IMPORT_DEFAULT_MODEL": "false",
        # mlx is registered by every build; the arm's backend is asked for by LoadModel, so a
        # backend this build lacks answers INVALID_ARGUMENT there instead of failing startup.
        "AGENTMESH_RUNNER_DEFAULT_BACKEND": "mlx",
        "AGENTMESH_RUNNER_MAX_BATCH": str(max_batch),
        "AGENTMESH_RUNNER_KEEP_ALIVE_SECONDS": "3600",
        "AGENTMESH_RUNNER_LOG_LEVEL": "WARNING",
    }
    process = ServiceProcess(RUNNER, env, log_path=log)
    try:
        await process.start(within_seconds=120)
    except ServiceStartError as exc:
        raise Unavailable(f"the runner did not start: {exc}") from exc
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = runner_pb2_grpc.LocalRunnerServiceStub(channel)
            try:
                loaded = await stub.LoadModel(
                    runner_pb2.LoadModelRequest(model=model, backend=backend), timeout=300
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise Unavailable(f"backend {backend!r}: {exc.details()}") from exc
                raise
            if loaded.model.backend != backend:
                raise Unavailable(f"asked for {backend!r}, loaded on {loaded.model.backend!r}")
            driver = RunnerDriver(f"runner ({backend})", stub, model)
            await driver.stream([Message("user", "Warm-up.")], 4)
            yield driver
    finally:
        await process.stop(grace=10)


# -- mlx_lm.server ---------------------------------------------------------------------


class ServerDriver:
    def __init__(self, label: str, client: httpx.AsyncClient) -> None:
        self.label = label
        self._client = client

    async def stream(
        self, messages: Sequence[Message], max_tokens: int, *, schema: dict[str, Any] | None = None
    ) -> Stream:
        if schema is not None:
            raise Rejected("UNIMPLEMENTED", "mlx_lm.server has no constrained decoding")
        body = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "temperature": 0.0,
            "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        first: float | None = None
        usage: dict[str, Any] = {}
        text: list[str] = []
        async with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode("utf-8", "replace")
                raise Rejected(f"HTTP {response.status_code}", detail)
            async for line in response.aiter_lines():
                # ": keepalive n/m" comment lines report prefill progress; skip them.
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if first is None:
                            first = time.perf_counter()
                        text.append(content)
        end = time.perf_counter()
        return Stream(
            ttft=(first or end) - start,
            seconds=end - start,
            completion_tokens=int(usage.get("completion_tokens", 0)),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            cached_prompt_tokens=int(
                (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            ),
            text="".join(text),
        )


def _free_port() -> int:
    # mlx_lm.server cannot bind port 0 and report the port, so take one the kernel says is
    # free; nothing else on this loopback interface races for it during a benchmark.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def mlx_server(
    model_dir: Path, *, label: str = "mlx_lm.server", extra_args: Sequence[str] = (), log: Path
) -> AsyncIterator[ServerDriver]:
    """``mlx_lm.server --model model_dir`` on a free loopback port, warmed up."""
    port = _free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mlx_lm.server",
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra_args,
            env={**os.environ, **_MLX_ENV},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            process_group=0,
        )
    try:
        timeout = httpx.Timeout(900.0, connect=10.0)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=timeout
        ) as client:
            await _wait_healthy(client, process, log)
            driver = ServerDriver(label, client)
            await driver.stream([Message("user", "Warm-up.")], 4)
            yield driver
    finally:
        await _stop(process)


async def _wait_healthy(
    client: httpx.AsyncClient, process: asyncio.subprocess.Process, log: Path
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.returncode is not None:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            tail = text.strip().splitlines()[-1:]
            raise Unavailable(f"mlx_lm.server exited ({process.returncode}): {tail}")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/health", timeout=2)).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise Unavailable("mlx_lm.server did not answer /health within 120 s")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
