"""LiteLLM's proxy for the side-by-side benchmark: installed from PyPI into its own virtual
environment under ``bench/gateway/.work/`` (never a project dependency), started with one
worker, no retries, a master key and no database, in front of the same fake provider."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
VENV = HERE / ".work" / "litellm"
VERSION = "1.108.7"
MASTER_KEY = "sk-bench-master-0123456789abcdef"


def ensure_installed() -> Path:
    """The venv's ``litellm`` script, installing ``litellm[proxy]==VERSION`` if needed."""
    script = VENV / "bin" / "litellm"
    if script.exists():
        return script
    uv = "uv"
    subprocess.run([uv, "venv", "--python", "3.11", str(VENV)], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--python",
            str(VENV / "bin" / "python"),
            f"litellm[proxy]=={VERSION}",
        ],
        check=True,
    )
    return script


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiteLLMProxy:
    """``async with LiteLLMProxy(base_url, workdir) as proxy``: ``proxy.url``, ``proxy.pid``."""

    def __init__(self, fake_base_url: str, workdir: Path) -> None:
        self.fake_base_url = fake_base_url
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def __aenter__(self) -> LiteLLMProxy:
        script = ensure_installed()
        config = self.workdir / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: bench\n"
            "    litellm_params:\n"
            "      model: openai/bench-model\n"
            f"      api_base: {self.fake_base_url}\n"
            "      api_key: sk-fake-provider\n"
            "      timeout: 30\n"
            "litellm_settings:\n"
            "  num_retries: 0\n"
            "  request_timeout: 30\n"
            "router_settings:\n"
            "  num_retries: 0\n"
            "  retry_after: 0\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
        )
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "DISABLE_SCHEMA_UPDATE": "True",
        }
        env.pop("DATABASE_URL", None)
        log = (self.workdir / "litellm.log").open("wb")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [
                str(script),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num_workers",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        async with httpx.AsyncClient() as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"litellm exited: {(self.workdir / 'litellm.log').read_text()[-2000:]}"
                    )
                try:
                    reply = await client.get(self.url + "/health/liveliness", timeout=2)
                    if reply.status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("litellm did not start within 180 s")
                await asyncio.sleep(0.5)

    async def __aexit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
