"""The Node client against a running mesh: `clients/node/examples/run_session.js` runs a
round-robin session on the scripted provider, drops its connection on purpose after three
events, resumes from the last seq it saw, and prints every event exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import MeshUp

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "clients" / "node" / "examples" / "run_session.js"
TERMINAL = {"session_completed", "session_failed", "session_cancelled"}


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_example_disconnects_resumes_and_sees_every_event_once(mesh: MeshUp) -> None:
    assert (ROOT / "clients" / "node" / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "run `make setup` (npm ci --prefix clients/node)"
    )
    result = subprocess.run(
        ["node", str(EXAMPLE), "--target", mesh.target, "--disconnect-after", "3"],
        env={**os.environ, "AGENTMESH_API_KEY": mesh.api_key},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "gapless from 1"
    assert [e["payload"] for e in events if e["payload"] in TERMINAL] == ["session_completed"]
    assert events[-1]["payload"] == "session_completed"
    assert "disconnected after seq 3; resuming" in result.stderr
    assert len(events) > 3, "the session went on after the disconnect"
    speakers = [e["agent"] for e in events if e["payload"] == "message_completed"]
    assert speakers == ["agents/greeter", "agents/critic"] * 2
    assert f"events: {len(events)}, gapless: true, terminal: session_completed" in result.stderr
