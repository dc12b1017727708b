"""What the command line prints for scripts: `--json` on every list and show command, whole names
in piped tables, and `agents show` as the agents file `agents create` reads back (against the
package's `agentmesh up`, see conftest)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import AGENTMESH, MeshUp

pytestmark = pytest.mark.slow

AGENT = """\
- id: {id}
  type: research
  model: default
  description: finds things out
  tools: [calculator]
  capabilities: [math, search]
  tool_approval: read-write
  generation: {{temperature: 0.5, max_tokens: 64}}
  memory_policy: {{read: true, max_entries_in_context: 3}}
  system: |
    You are {id}.
    Answer in one line.
  user_template: "Question: {{goal}}"
"""


def parsed(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_list_and_show_command_speaks_json(mesh: MeshUp, tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text(AGENT.format(id="json-agent"))
    assert mesh.cli("agents", "create", str(tmp_path / "agent.yaml")).returncode == 0
    stored = mesh.cli("memory", "put", "json-agent", "city", '"Lyon"')
    assert stored.returncode == 0, stored.stderr
    assert mesh.cli("collections", "create", "json-docs").returncode == 0
    ran = mesh.cli("run", "Say hello", "--json")
    session = json.loads(ran.stdout.splitlines()[0])["session"]

    results = mesh.cli_all(
        (["sessions", "list", "--json"], {}),
        (["sessions", "show", session, "--json"], {}),
        (["agents", "list", "--json"], {}),
        (["agents", "show", "json-agent", "--json"], {}),
        (["agents", "stats", "json-agent", "--json"], {}),
        (["memory", "list", "json-agent", "--json"], {}),
        (["memory", "get", "json-agent", "city", "--json"], {}),
        (["memory", "stats", "json-agent", "--json"], {}),
        (["settings", "show", "--json"], {}),
        (["models", "--json"], {}),
        (["providers", "--json"], {}),
        (["tools", "--json"], {}),
        (["usage", "--json"], {}),
        (["collections", "list", "--json"], {}),
        (["collections", "show", "json-docs", "--json"], {}),
        (["documents", "list", "json-docs", "--json"], {}),
        (["search", "hello", "--json"], {}),
    )
    (
        sessions,
        shown,
        agents,
        agent,
        agent_stats,
        memories,
        entry,
        memory_stats,
        settings,
        models,
        providers,
        tools,
        usage,
        collections,
        collection,
        documents,
        search,
    ) = (parsed(r) for r in results)

    assert session in [s["name"] for s in sessions]
    assert shown["session"]["name"] == session
    assert shown["session"]["status"] == "SESSION_STATUS_COMPLETED"
    assert "agents/json-agent" in [a["name"] for a in agents]
    assert agent["name"] == "agents/json-agent"
    assert agent["type"] == "AGENT_TYPE_RESEARCH"
    assert agent_stats["agent"] == "agents/json-agent"
    assert [m["name"] for m in memories] == ["agents/json-agent/users/default/memories/city"]
    assert entry["value"] == "Lyon"
    assert int(memory_stats["total"]["entries"]) == 1
    assert isinstance(settings, dict)
    assert {"default", "tiny"} <= {m["route"] for m in models}
    assert "openai_compatible" in {p["provider"] for p in providers}
    assert "calculator" in {t["spec"]["name"] for t in tools}
    assert isinstance(usage.get("rows", []), list)
    assert "collections/json-docs" in [c["name"] for c in collections]
    assert collection["collection"]["name"] == "collections/json-docs"
    assert collection["documents"] == documents == []
    assert search.get("results", []) == []


def test_piped_lists_keep_whole_names_that_other_commands_accept(mesh: MeshUp) -> None:
    ran = mesh.cli("run", "Say hello", "--json")
    session = json.loads(ran.stdout.splitlines()[0])["session"]
    # A narrow "terminal" width: a table would have to cut the 41-character names.
    listed = mesh.cli("sessions", "list", COLUMNS="40")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t")[:3] == ["session", "status", "strategy"]
    names = [row.split("\t")[0] for row in rows]
    assert session in names
    assert "…" not in listed.stdout
    shown = mesh.cli("sessions", "show", names[names.index(session)], "--json")
    assert parsed(shown)["session"]["name"] == session


def test_agents_show_prints_the_agents_file_that_creates_the_same_agent(
    mesh: MeshUp, tmp_path: Path
) -> None:
    (tmp_path / "agent.yaml").write_text(AGENT.format(id="round-trip"))
    assert mesh.cli("agents", "create", str(tmp_path / "agent.yaml")).returncode == 0
    before = parsed(mesh.cli("agents", "show", "round-trip", "--json"))
    shown = mesh.cli("agents", "show", "round-trip", COLUMNS="40")
    assert shown.returncode == 0, shown.stderr
    document = yaml.safe_load(shown.stdout)
    assert document[0]["id"] == "round-trip"
    assert document[0]["type"] == "research"
    assert document[0]["model"] == "default"
    assert document[0]["system"] == "You are round-trip.\nAnswer in one line.\n"

    assert mesh.cli("agents", "delete", "round-trip").returncode == 0
    (tmp_path / "shown.yaml").write_text(shown.stdout)
    again = mesh.cli("agents", "create", str(tmp_path / "shown.yaml"))
    assert again.returncode == 0, again.stderr
    after = parsed(mesh.cli("agents", "show", "round-trip", "--json"))
    for times in ("createTime", "updateTime"):
        before.pop(times, None)
        after.pop(times, None)
    assert after == before
    assert mesh.cli("agents", "show", "round-trip").stdout == shown.stdout


def test_every_command_finds_the_mesh_through_its_data_dir(mesh: MeshUp, tmp_path: Path) -> None:
    """AGENTMESH_DATA_DIR (or .data) names the mesh: no target, key or memory address given."""
    env = {
        k: v for k, v in mesh.env().items() if k not in ("AGENTMESH_TARGET", "AGENTMESH_API_KEY")
    }
    env["AGENTMESH_DATA_DIR"] = str(mesh.data_dir)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AGENTMESH, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    created = cli("keys", "create", "--tenant", "found-by-data-dir")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("amk_")
    assert "calculator" in {t["spec"]["name"] for t in parsed(cli("tools", "--json"))}
