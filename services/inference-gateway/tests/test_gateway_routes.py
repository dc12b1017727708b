"""The routes file: validation errors name file, line and reason; keys from env and files;
weighted load balancing between equal priorities; rotation of several keys; the token
estimator is deterministic."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.calls import ask, finished
from agentmesh_gateway_fakes.server import FakeProvider, Stream

from agentmesh_gateway.domain import ChatMessage, Role
from agentmesh_gateway.routes import RoutesFileError, load_routes
from agentmesh_gateway.tokens import count_messages, count_text


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "routes:\n  main:\n    - provider: openia\n      model: x\n",
            ":3: routes.main.0.provider",
        ),
        ("routes:\n  main:\n    - provider: openai\n", ":3: routes.main.0.model"),
        (
            "routes:\n  main:\n    - provider: openai\n      model: m\n      weight: 0\n",
            ":5: routes.main.0.weight",
        ),
        (
            "routes:\n  main:\n    - provider: openai\n      model: m\n      colour: red\n",
            ":5: routes.main.0.colour: Extra inputs are not permitted",
        ),
        ("routes:\n  main: [\n", ":3: invalid YAML"),
        ("routes:\n  main: []\n", ":2: routes: Value error, route 'main' has no deployments"),
    ],
)
def test_invalid_routes_files_name_file_line_and_reason(
    tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with pytest.raises(RoutesFileError) as caught:
        load_routes(path, {})
    assert str(caught.value).startswith(f"{path}{where}")


def test_keys_come_from_env_vars_and_files_and_never_show_in_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "openai.key"
    secret_file.write_text("sk-from-file-123456\n")
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n  main:\n    - provider: openai\n      model: m\n"
        f"      api_key_env: [K1, K2]\n      api_key_file: {secret_file}\n"
    )
    table = load_routes(path, {"K1": "sk-env-one-123456", "K2": ""})
    (deployment,) = table.routes["main"]
    assert [k.reveal() for k in deployment.keys] == ["sk-env-one-123456", "sk-from-file-123456"]
    assert "sk-" not in repr(deployment)
    path.write_text(
        "routes:\n  main:\n    - provider: openai\n      model: m\n      api_key_file: /nope\n"
    )
    with pytest.raises(RoutesFileError, match=r":5: cannot read api_key_file"):
        load_routes(path, {})


async def test_equal_priorities_balance_by_weight_and_keys_rotate(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.default = Stream(wire.sse(*wire.openai_text(), done=True))
    fake2.default = Stream(wire.sse(*wire.openai_text(), done=True))
    yaml = f"""
routes:
  main:
    - {{name: heavy, provider: openai, model: m, base_url: '{fake.url}', weight: 3,
       api_key_env: [A, B]}}
    - {{name: light, provider: openai, model: m, base_url: '{fake2.url}', weight: 1,
       api_key_env: A}}
"""
    h = harness(yaml, {"A": "sk-key-aaaaaaaa", "B": "sk-key-bbbbbbbb"})
    results = await asyncio.gather(*(h.run(ask()) for _ in range(200)))
    counts = Counter(finished(events).deployment for events in results)
    assert 120 <= counts["heavy"] <= 180, counts
    assert counts["heavy"] + counts["light"] == 200
    keys = Counter(r.headers["Authorization"] for r in fake.requests)
    assert abs(keys["Bearer sk-key-aaaaaaaa"] - keys["Bearer sk-key-bbbbbbbb"]) <= 1


def test_token_estimate_is_deterministic_and_plausible() -> None:
    text = "The quick brown fox jumps over the lazy dog, twice: 1234567!"
    assert count_text(text) == count_text(text)
    assert 12 <= count_text(text) <= 24
    assert count_text("") == 0
    messages = (ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, text))
    assert count_messages(messages) == 3 + 4 + count_text("Be brief.") + 4 + count_text(text)


def test_a_gateway_process_with_an_invalid_routes_file_exits_naming_the_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  main:\n    - provider: openai\n      model: m\n      rpm: -1\n")
    env = {
        **os.environ,
        "AGENTMESH_GATEWAY_ROUTES_FILE": str(path),
        "AGENTMESH_GATEWAY_PORT": "0",
        "AGENTMESH_GATEWAY_METRICS_PORT": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "agentmesh_gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"{path}:5: routes.main.0.rpm" in done.stderr
