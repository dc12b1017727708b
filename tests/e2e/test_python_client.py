"""The slim Python client, installed alone in a fresh virtual environment, against a real mesh.

The client and protos wheels are built with `uv build`, installed into a new venv with their
dependencies (from uv's cache, else the registry), and a script there uses the sync facade:
create a session, run it, drop the stream part-way, resume from `after_seq`, and catch typed
errors with their reason and field violation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import MeshUp

REPO = Path(__file__).resolve().parents[2]
#: The services' runtime, which the client must not bring.
FORBIDDEN = {
    "agentmesh-common",
    "agentmesh-cli",
    "pydantic",
    "pydantic-settings",
    "prometheus-client",
    "opentelemetry-sdk",
    "opentelemetry-api",
    "grpcio-status",
    "typer",
    "rich",
}

SCRIPT = textwrap.dedent(
    """
    import json, os
    from agentmesh.common.v1 import sessions_pb2
    from agentmesh_client import errors
    from agentmesh_client.sync import SyncAgentmeshClient

    out = {}
    with SyncAgentmeshClient(os.environ["MESH_TARGET"], api_key=os.environ["MESH_KEY"],
                             timeout=20) as mesh:
        session = mesh.create_session(goal="Say hello", strategy=sessions_pb2.STRATEGY_ROUTER)
        out["session"] = session.name
        first = []
        for event in mesh.run(session.name):  # leave the stream after two events
            first.append([event.seq, event.WhichOneof("payload")])
            if len(first) == 2:
                break
        out["first"] = first
        out["resumed"] = [
            [e.seq, e.WhichOneof("payload")]
            for e in mesh.events(session.name, after_seq=first[-1][0])
        ]
        try:
            mesh.create_session(goal="   ")
        except errors.InvalidArgument as err:
            out["invalid"] = {
                "class": type(err).__name__,
                "reason": err.reason,
                "violations": [[v.field, v.description] for v in err.violations],
            }
        try:
            mesh.get_session("sessions/" + "0" * 32)
        except errors.NotFound as err:
            out["missing"] = {"class": type(err).__name__, "reason": err.reason}
    print(json.dumps(out))
    """
)


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the client and protos wheels and their dependencies."""
    root = tmp_path_factory.mktemp("client-venv")
    wheels = root / "wheels"
    for package in ("agentmesh-protos", "agentmesh-client"):
        _run([*_uv(), "build", "--package", package, "--wheel", "-o", str(wheels)], cwd=REPO)
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    install = [*_uv(), "pip", "install", "--python", str(python), *map(str, wheels.glob("*.whl"))]
    # uv's cache holds every dependency once `make setup` has run; the registry otherwise.
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    offline = subprocess.run(
        [*install, "--offline"], capture_output=True, text=True, timeout=300, env=env
    )
    if offline.returncode != 0:
        _run(install, env=env)
    return python


def test_the_client_installs_without_the_services_runtime(client_venv: Path) -> None:
    listing = _run(
        [
            str(client_venv),
            "-c",
            "import importlib.metadata as m, json;"
            "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))",
        ]
    )
    installed = set(json.loads(listing.stdout))
    assert {"agentmesh-client", "agentmesh-protos", "grpcio", "protobuf"} <= installed
    assert "googleapis-common-protos" in installed
    assert not installed & FORBIDDEN, installed & FORBIDDEN


def test_sync_facade_runs_resumes_and_raises_typed_errors(
    client_venv: Path, mesh: MeshUp, tmp_path: Path
) -> None:
    script = tmp_path / "use_client.py"
    script.write_text(SCRIPT)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "MESH_TARGET": mesh.target,
        "MESH_KEY": mesh.api_key,
    }
    # -I: nothing from the workspace (current directory, PYTHONPATH) leaks in.
    result = _run([str(client_venv), "-I", str(script)], env=env, cwd=tmp_path)
    out = json.loads(result.stdout.strip().splitlines()[-1])

    seqs = [seq for seq, _ in out["first"] + out["resumed"]]
    assert seqs == list(range(1, len(seqs) + 1)), "every event once, in order, after resuming"
    assert out["first"][0][1] == "session_started"
    assert out["resumed"][-1][1] == "session_completed"

    assert out["invalid"] == {
        "class": "InvalidArgument",
        "reason": "INVALID_ARGUMENT",
        "violations": [["session.goal", "required"]],
    }
    assert out["missing"] == {"class": "SessionNotFound", "reason": "SESSION_NOT_FOUND"}
