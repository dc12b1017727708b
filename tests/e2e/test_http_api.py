"""`agentmesh up` serves the gateway's OpenAI-compatible HTTP API: its base URL is in its
table and `mesh.json`, the tenant API key `up` made works with the official openai SDKs
(Python and the npm package), and the calls show in `agentmesh usage` under the tenant."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from .conftest import MeshUp

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "tests" / "e2e" / "node-openai"


def test_up_lists_the_http_api_and_the_python_sdk_uses_it_with_the_key(mesh: MeshUp) -> None:
    base_url = mesh.state["openai_base_url"]
    assert base_url.startswith("http://127.0.0.1:")
    assert mesh.state["services"]["inference-gateway"]["http"] + "/v1" == base_url
    client = openai.OpenAI(base_url=base_url, api_key=mesh.api_key, max_retries=0)
    reply = client.chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "You are Ada."}, {"role": "user", "content": "hi"}],
    )
    assert reply.choices[0].message.content == "Ada says hello"
    assert reply.usage is not None
    assert reply.usage.total_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).models.list()
    shown = mesh.cli("usage", "--by", "model")
    assert shown.returncode == 0, shown.stderr
    assert "openai_compatible/scripted-1" in shown.stdout


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_openai_npm_package_streams_and_gets_typed_errors(mesh: MeshUp) -> None:
    assert (NODE_CLIENT / "node_modules" / "openai").is_dir(), (
        "run `make setup` (npm ci --prefix tests/e2e/node-openai)"
    )
    result = subprocess.run(
        ["node", str(NODE_CLIENT / "chat.mjs")],
        env={**os.environ, "BASE_URL": mesh.state["openai_base_url"], "API_KEY": mesh.api_key},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["text"] == "assistant says hello"
    assert found["whole"] == "assistant says hello"
    assert found["usage"]["total_tokens"] > 0
    assert "default" in found["models"]
    assert found["badKey"] == {"name": "AuthenticationError", "status": 401}
    assert found["unknownModel"] == {"name": "NotFoundError", "status": 404}
