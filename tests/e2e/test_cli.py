"""The `agentmesh` command line end to end: `up` as a real process tree, `run` on every strategy,
Ctrl-C, a restart that keeps the sessions, one-line errors, and every other command.

One `agentmesh up --port-base 0 --routes FILE` serves the module: route `default` goes to a
scripted OpenAI-format provider, route `tiny` to the local runner's demo model. The restart and
occupied-port tests start their own `up` on the embedded default (no routes file).
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.timing import scaled

from .conftest import (
    AGENTMESH,
    CLI_ENV,
    MeshUp,
    ScriptedProvider,
    alive,
    free_port_block,
    last_user,
    processes_using,
    start_up,
    system_of,
)
from .test_knowledge import research_cites_a_passage

pytestmark = pytest.mark.slow
TERMINAL = {"sessionCompleted", "sessionFailed", "sessionCancelled"}
TEAM = """\
agents:
  - id: alice
    type: custom
    model: {route}
    system: You are alice.
    generation: {{max_tokens: 16}}
  - id: bob
    type: custom
    model: {route}
    system: You are bob.
    generation: {{max_tokens: 16}}
"""


@pytest.fixture(scope="module")
def team_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("teams")
    files = {}
    for route in ("default",):
        files[route] = folder / f"{route}.yaml"
        files[route].write_text(TEAM.format(route=route))
    return files


def json_events(stdout: str) -> list[dict[str, Any]]:
    """`--json` output: one proto3-JSON SessionEvent per line, nothing else."""
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events, "no events"
    return events


def payload(event: dict[str, Any]) -> str:
    known = {"session", "seq", "time", "agent", "traceId", "messageId", "taskId"}
    (kind,) = [key for key in event if key not in known]
    return kind


def assert_one_story(events: list[dict[str, Any]], ending: str = "sessionCompleted") -> None:
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1)), "gapless seq"
    assert [payload(e) for e in events if payload(e) in TERMINAL] == [ending]
    assert payload(events[-1]) == ending
    assert len({e["session"] for e in events}) == 1


MULTI_PART_GOAL = (
    "Write a short guide to keeping a houseplant alive: where to put it, how often to water"
    " it, and when to repot it."
)


def run_args(strategy: str, team: dict[str, Path], route: str) -> list[str]:
    args = ["run", "Say hello to the team", "--strategy", strategy, "--max-rounds", "1"]
    if strategy in ("round-robin", "pipeline"):
        args += ["--agents", str(team[route])]
    return args


# -- run ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["router", "planner-executor", "round-robin", "pipeline"])
def test_run_json_on_each_strategy_with_the_scripted_provider(
    mesh: MeshUp, team_files: dict[str, Path], strategy: str
) -> None:
    result = mesh.cli(*run_args(strategy, team_files, "default"), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = json_events(result.stdout)
    assert_one_story(events)
    kinds = [payload(e) for e in events]
    completed = events[-1]["sessionCompleted"]
    assert completed["finalAnswer"]
    assert int(completed["usage"]["totalTokens"]) > 0
    assert int(completed["usage"]["costMicrosUsd"]) > 0, "priced by the routes file"
    if strategy == "router":
        assert "analysis" in kinds
        assert completed["finalAnswer"] == "assistant says hello"
    elif strategy == "planner-executor":
        assert kinds.count("taskCompleted") == 2
        assert completed["finalAnswer"].startswith("Hello, [bold]team")
    else:
        speakers = [e["agent"] for e in events if payload(e) == "messageCompleted"]
        assert speakers == ["agents/alice", "agents/bob"]
        assert completed["finalAnswer"] == "bob says hello"


def test_the_live_view_ends_with_the_answer_and_the_usage_table(
    mesh: MeshUp, team_files: dict[str, Path]
) -> None:
    result = mesh.cli(*run_args("planner-executor", team_files, "default"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b" not in out, "no escape codes on a pipe"
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert "plan" in out
    assert "draft" in out
    assert "polish" in out
    assert "done" in out
    answer_panel = next(i for i, line in enumerate(lines) if "final answer" in line)
    assert "Hello, [bold]team[/bold]! The greeting is ready." in lines[answer_panel + 1], (
        "model text is shown as it is, not read as markup"
    )
    assert re.search(r"session sessions/\w+: completed", out)
    usage = out[out.index("usage") :]
    for column in ("agent", "prompt", "completion", "total", "cost (USD)"):
        assert column in usage
    total = re.search(r"│ total\s+│\s+(\d+) │\s+(\d+) │\s+(\d+) │\s+([\d.]+) │", usage)
    assert total, usage
    prompt, completion, together, cost = total.groups()
    assert int(prompt) + int(completion) == int(together) > 0
    assert float(cost) > 0


def test_ctrl_c_cancels_the_session_and_shows_its_usage(mesh: MeshUp) -> None:
    process = subprocess.Popen(
        [AGENTMESH, "run", "Count slowly to forty", "--json"],
        env=mesh.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    seen: list[str] = []
    for line in process.stdout:  # the router's answer streams slowly: interrupt mid-stream
        seen.append(line)
        if payload(json.loads(line)) == "contentDelta":
            break
    process.send_signal(signal.SIGINT)
    # Read the rest through the same file object: lines it already buffered are in it
    # (communicate() would read the pipe directly and lose them).
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        rest, err = process.stdout.read(), process.stderr.read()
        process.wait()
    finally:
        watchdog.cancel()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    events = json_events("".join(seen) + rest)
    assert_one_story(events, ending="sessionCancelled")
    cancelled = events[-1]["sessionCancelled"]
    assert int(cancelled["usage"]["promptTokens"]) > 0, "the router's finished turn is counted"
    status = mesh.cli("sessions", "show", events[0]["session"])
    assert status.returncode == 0, status.stderr
    assert "cancelled" in status.stdout.splitlines()[0]


def test_ctrl_c_in_the_live_view_shows_the_cancelled_usage(
    mesh: MeshUp, provider: ScriptedProvider
) -> None:
    def slow_turns() -> int:
        return sum(
            1
            for chat in list(provider.requests)
            if "slowly" in last_user(chat) and "Classify the goal" not in system_of(chat)
        )

    before = slow_turns()
    process = subprocess.Popen(
        [AGENTMESH, "run", "Count slowly to forty"],
        env=mesh.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + scaled(30)
    while slow_turns() == before:  # the router answers at once, then the assistant streams 30 s
        assert time.monotonic() < deadline, "the assistant's turn never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert re.search(r"session sessions/\w+: cancelled", out), out
    assert "│ total" in out


# -- errors ----------------------------------------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


KEEPER = """\
- id: keeper
  type: custom
  model: default
  system: You keep notes.
  tools: [memory_write]
  tool_approval: read-write
"""
KEEPER_TEAM = """\
limits: {max_rounds: 1}
agents: [keeper]  # the stored agent: memory belongs to agents created with CreateAgent
"""


def keeper_team(mesh: MeshUp, tmp_path: Path) -> Path:
    """A team of the stored agent `keeper` (created once per mesh)."""
    (tmp_path / "keeper-agent.yaml").write_text(KEEPER)
    created = mesh.cli("agents", "create", str(tmp_path / "keeper-agent.yaml"))
    assert created.returncode == 0 or "ALREADY_EXISTS" in created.stderr, created.stderr
    team = tmp_path / "keeper.yaml"
    team.write_text(KEEPER_TEAM)
    return team


def test_run_without_a_terminal_stops_at_an_approval_saying_how_to_answer(
    mesh: MeshUp, tmp_path: Path
) -> None:
    team = keeper_team(mesh, tmp_path)
    stopped = mesh.cli("run", "Remember the budget", "--agents", str(team), "--json")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    (line,) = stopped.stderr.strip().splitlines()
    found = re.search(r"agentmesh sessions approve (sessions/\S+) (ap-\w+)", line)
    assert found, line
    assert "keeper wants to call memory_write" in line
    assert "no terminal" in line
    session, approval_id = found.groups()
    waited = json_events(stopped.stdout)
    assert payload(waited[-1]) == "approvalRequested", "the event was shown before stopping"

    approved = mesh.cli("sessions", "approve", session, approval_id)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"{session}/approvals/{approval_id}: approved"
    watched = mesh.cli("sessions", "watch", session, "--json")
    assert watched.returncode == 0, watched.stderr
    events = json_events(watched.stdout)
    assert_one_story(events)
    assert events[-1]["sessionCompleted"]["finalAnswer"] == 'noted: {"stored":"budget"}'
    again = mesh.cli("sessions", "reject", session, approval_id)
    assert again.returncode == 1
    assert "FAILED_PRECONDITION APPROVAL_RESOLVED" in again.stderr

    inline = tmp_path / "inline-keeper.yaml"  # the same agent defined inline has no memory
    inline.write_text(KEEPER)
    refused = mesh.cli("run", "Remember the budget", "--agents", str(inline))
    assert refused.returncode == 1, refused.stdout
    assert "session.inline_agents[0].tools[0]" in refused.stderr
    assert "memory_write keeps memory for agents created with CreateAgent" in refused.stderr


def test_run_on_a_terminal_asks_y_n_and_the_call_runs(mesh: MeshUp, tmp_path: Path) -> None:
    team = keeper_team(mesh, tmp_path)
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [AGENTMESH, "run", "Remember the budget", "--agents", str(team), "--json"],
            env=mesh.env(),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(controller, b"y\n")  # typed ahead: read when the question is asked
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert process.returncode == 0, err
    assert "keeper wants to call memory_write" in err
    assert "Approve? [y/N]" in err
    events = json_events(out)
    assert_one_story(events)
    resolved = next(e["approvalResolved"] for e in events if payload(e) == "approvalResolved")
    assert resolved["approval"]["state"] == "APPROVAL_STATE_APPROVED"
    assert resolved["approval"]["comment"] == "approved at the terminal"
    assert events[-1]["sessionCompleted"]["finalAnswer"] == 'noted: {"stored":"budget"}'


def test_errors_are_one_readable_line(mesh: MeshUp) -> None:
    empty_goal, wrong_key, unknown, unreachable = mesh.cli_all(
        (["run", ""], {}),
        (["sessions", "list"], {"AGENTMESH_API_KEY": "amk_wrong"}),
        (["sessions", "show", "nope"], {}),
        (["models", "--target", "127.0.0.1:1"], {}),
    )
    assert_one_line_error(empty_goal, "INVALID_ARGUMENT", "(field: session.goal)")
    assert_one_line_error(wrong_key, "UNAUTHENTICATED")
    assert_one_line_error(unknown, "NOT_FOUND")
    assert_one_line_error(unreachable, "UNAVAILABLE")


# -- the other commands ----------------------------------------------------------------------


def test_commands_find_the_mesh_up_wrote_to_dot_data(mesh: MeshUp, tmp_path: Path) -> None:
    (tmp_path / ".data").symlink_to(mesh.data_dir)
    env = {
        k: v for k, v in mesh.env().items() if k not in ("AGENTMESH_TARGET", "AGENTMESH_API_KEY")
    }
    result = subprocess.run(
        [AGENTMESH, "tools"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "calculator" in result.stdout


def test_agents_create_list_show_delete(mesh: MeshUp, tmp_path: Path) -> None:
    file = tmp_path / "agents.yaml"
    file.write_text(
        "- id: smoke-writer\n"
        "  type: synthesis\n"
        "  model: default\n"
        "  description: writes the summary\n"
        "  tools: [calculator]\n"
    )
    created = mesh.cli("agents", "create", str(file))
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "created agents/smoke-writer"
    listed = mesh.cli("agents", "list")
    row = next(line for line in listed.stdout.splitlines() if "agents/smoke-writer" in line)
    assert "synthesis" in row
    assert "calculator" in row
    shown = mesh.cli("agents", "show", "smoke-writer")
    assert "type: synthesis" in shown.stdout
    assert "model: default" in shown.stdout
    deleted = mesh.cli("agents", "delete", "smoke-writer")
    assert deleted.stdout.strip() == "deleted agents/smoke-writer"
    assert "smoke-writer" not in mesh.cli("agents", "list").stdout


def test_memory_put_get_list_delete(mesh: MeshUp, tmp_path: Path) -> None:
    # Memory belongs to an agent that exists.
    assert_one_line_error(mesh.cli("memory", "put", "alice", "city", "1"), "NOT_FOUND")
    (tmp_path / "alice.yaml").write_text("- id: alice\n  type: custom\n")
    assert mesh.cli("agents", "create", str(tmp_path / "alice.yaml")).returncode == 0
    stored = mesh.cli("memory", "put", "alice", "city", '{"name": "Lyon", "visits": 2}')
    assert stored.returncode == 0, stored.stderr
    assert "agents/alice/users/default/memories/city" in stored.stdout
    got = mesh.cli("memory", "get", "alice", "city")
    assert json.loads(got.stdout) == {"name": "Lyon", "visits": 2.0}
    listed = mesh.cli("memory", "list", "alice")
    assert listed.stdout.startswith("city = ")
    episodes = mesh.cli("memory", "put", "alice", "trip", '"Lyon in May"', "--type", "episodic")
    assert episodes.returncode == 0, episodes.stderr
    only = mesh.cli("memory", "list", "alice", "--type", "episodic")
    assert only.stdout.strip() == 'trip = "Lyon in May"'
    stats = mesh.cli("memory", "stats", "alice")
    assert "(total)" in stats.stdout
    bad_type = mesh.cli("memory", "list", "alice", "--type", "forever")
    assert bad_type.returncode == 2
    assert "--type must be one of short_term, long_term, episodic" in bad_type.stderr
    assert mesh.cli("memory", "delete", "alice", "city").stdout.strip() == "deleted"
    assert_one_line_error(mesh.cli("memory", "get", "alice", "city"), "NOT_FOUND")
    bad = mesh.cli("memory", "put", "alice", "city", "{not json")
    assert bad.returncode == 2
    assert "VALUE is not JSON" in bad.stderr


def test_settings_set_and_show(mesh: MeshUp) -> None:
    changed = mesh.cli(
        "settings", "set", "--default-route", "tiny", "--preference", "local", "--user", "carol"
    )
    assert changed.returncode == 0, changed.stderr
    shown = mesh.cli("settings", "show", "--user", "carol")
    assert "defaultRoute: tiny" in shown.stdout
    assert "modelPreference: MODEL_PREFERENCE_LOCAL" in shown.stdout


def test_models_providers_tools(mesh: MeshUp) -> None:
    models, providers, tools = (
        r.stdout for r in mesh.cli_all((["models"], {}), (["providers"], {}), (["tools"], {}))
    )
    # Piped: a header, then tab-separated rows.
    assert models.splitlines()[0].split("\t") == [
        "route",
        "deployments (fallback order)",
        "context",
    ]
    assert "default\topenai_compatible/scripted-1\t" in models, models
    assert "tiny\tlocal/tiny\t" in models, models
    row = next(line for line in providers.splitlines() if "openai_compatible/scripted-1" in line)
    assert "\tclosed\t" in row
    assert "calculator\tread-only\t" in tools, tools


def test_keys_create_gives_a_working_key_for_a_new_tenant(mesh: MeshUp) -> None:
    created = mesh.cli("keys", "create", "--tenant", "acme", "--memory", mesh.state["memory"])
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert re.fullmatch(r"amk_[\w-]+", key)
    listed = mesh.cli("sessions", "list", AGENTMESH_API_KEY=key)
    assert listed.returncode == 0, listed.stderr
    assert "sessions/" not in listed.stdout, "a new tenant sees none of the local sessions"


def test_sessions_list_show_watch_cancel(mesh: MeshUp, team_files: dict[str, Path]) -> None:
    done = json_events(mesh.cli(*run_args("round-robin", team_files, "default"), "--json").stdout)
    name = done[0]["session"]
    listed = mesh.cli("sessions", "list", "--status", "completed")
    assert name in listed.stdout
    shown = mesh.cli("sessions", "show", name.removeprefix("sessions/"))
    assert shown.stdout.splitlines()[0] == f"{name}  completed"
    assert "agents: agents/alice, agents/bob" in shown.stdout
    watched = mesh.cli("sessions", "watch", name, "--after-seq", "3", "--json")
    replay = json_events(watched.stdout)
    assert [int(e["seq"]) for e in replay] == list(range(4, len(done) + 1))
    assert replay == done[3:]
    cancel = mesh.cli("sessions", "cancel", name)
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.strip() == f"{name}: completed", "cancelling a finished session is a no-op"


# -- up --------------------------------------------------------------------------------------


@pytest.mark.timeout(scaled(180))  # real SmolLM2 sessions; scaled to the machine
def test_up_from_a_fresh_data_dir_stops_cleanly_and_a_restart_keeps_the_sessions(
    tmp_path: Path, team_files: dict[str, Path]
) -> None:
    data_dir = tmp_path / "fresh"
    first = start_up(data_dir)  # the embedded default: route default -> SmolLM2, locally
    try:
        assert (data_dir / "agentmesh.db").exists()
        assert (data_dir / "api-key").stat().st_mode & 0o077 == 0, "the key is private"
        assert sorted(p.name for p in (data_dir / "logs").iterdir()) == [
            "inference-gateway.log",
            "local-runner.log",
            "memory.log",
            "orchestrator.log",
            "web.log",
        ]
        assert all(alive(pid) for pid in first.pids)
        with urllib.request.urlopen(f"{first.state['web']}/healthz", timeout=10) as health:
            assert json.load(health) == {"status": "SERVING"}, "the web edge is up too"
        sessions = []
        for strategy in ("round-robin", "pipeline"):
            result = first.cli(*run_args(strategy, team_files, "default"), "--json")
            assert result.returncode == 0, result.stderr
            events = json_events(result.stdout)
            assert_one_story(events)
            finished = [e["messageCompleted"] for e in events if payload(e) == "messageCompleted"]
            assert [f["provider"] for f in finished] == ["local", "local"], "the local runner"
            assert all(0 < int(f["usage"]["completionTokens"]) <= 16 for f in finished)
            sessions.append(events[0]["session"])
        # A selector team on the real default model: it picks the first speaker under a schema
        # whose enum is the team; the other one then speaks (no repeats, no call needed).
        selected = first.cli(
            "run",
            "Say hello to the team",
            "--agents",
            str(team_files["default"]),
            "--strategy",
            "selector",
            "--max-rounds",
            "2",
            "--json",
            timeout=120,
        )
        assert selected.returncode == 0, selected.stderr
        selector_events = json_events(selected.stdout)
        assert_one_story(selector_events)
        picks = [e["analysis"] for e in selector_events if payload(e) == "analysis"]
        spoken = [
            e["agent"]
            for e in selector_events
            if payload(e) == "messageCompleted" and e["agent"].startswith("agents/")
        ]
        assert [p["selectedAgent"] for p in picks] == spoken
        assert sorted(spoken) == ["agents/alice", "agents/bob"]
        assert "round-robin order" not in picks[0]["reason"], "SmolLM2 named a member"
        assert picks[1]["reason"] == f"the only allowed speaker after {spoken[0][7:]}"
        # The router answers a factual question with the real default model (SmolLM2).
        routed = first.cli("run", "What is the capital of France?", "--json", timeout=120)
        assert routed.returncode == 0, routed.stderr
        routed_events = json_events(routed.stdout)
        assert_one_story(routed_events)
        analysis = next(e["analysis"] for e in routed_events if payload(e) == "analysis")
        assert analysis["kind"] == "GOAL_KIND_SIMPLE"
        answer = routed_events[-1]["sessionCompleted"]["finalAnswer"]
        assert "Paris" in answer
        # A multi-part goal: analysis -> a validated plan -> tasks -> synthesis, all local.
        planned = first.cli("run", MULTI_PART_GOAL, "--json", timeout=300)
        assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr
        planned_events = json_events(planned.stdout)
        assert_one_story(planned_events)
        kinds_seen = [payload(e) for e in planned_events]
        analysis = next(e["analysis"] for e in planned_events if payload(e) == "analysis")
        assert analysis["chosenStrategy"] == "STRATEGY_PLANNER_EXECUTOR"
        plan = next(e["planCreated"] for e in planned_events if payload(e) == "planCreated")
        tasks = plan["plan"]["tasks"]
        assert tasks
        assert all(t["description"] for t in tasks)
        assert kinds_seen.count("taskCompleted") == len(tasks)
        final = planned_events[-1]["sessionCompleted"]["finalAnswer"]
        assert len(final.split()) >= 5, final
        # A research agent cites a passage of an uploaded document (test_knowledge.py).
        research_cites_a_passage(first, tmp_path)
        session = sessions[0]
    finally:
        code, out = first.stop(signal.SIGINT)
    assert code == 0, out
    assert first.api_key in out, "up prints the API key"
    assert first.target in out
    assert out.rstrip().endswith("stopped")
    assert not [pid for pid in first.pids if alive(pid)]
    assert processes_using(data_dir) == [], "nothing is left running"
    assert not (data_dir / "mesh.json").exists()

    second = start_up(data_dir)
    try:
        assert second.api_key == first.api_key, "the stored key is reused"
        listed = second.cli("sessions", "list")
        assert session in listed.stdout
        row = next(line for line in listed.stdout.splitlines() if session in line)
        assert "completed" in row
        assert "round_robin" in row
        assert sessions[1] in listed.stdout
        shown = second.cli("sessions", "show", session)
        assert shown.stdout.splitlines()[0] == f"{session}  completed"
    finally:
        code, out = second.stop(signal.SIGTERM)
    assert code == 0, out
    assert processes_using(data_dir) == []


def test_an_occupied_port_is_reported_with_the_services_error_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    base = free_port_block(15)  # gRPC N..N+4, HTTP N+5, N+6, metrics N+10..N+14
    data_dir = tmp_path / "busy"
    # The runner's port (base + 2): memory starts first and must be stopped.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 2))
        squatter.listen()
        result = subprocess.run(
            [AGENTMESH, "up", "--data-dir", str(data_dir), "--port-base", str(base)],
            env={**os.environ, **CLI_ENV},
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: local-runner did not start (exited with code 1)")
    assert f"Failed to bind to address 127.0.0.1:{base + 2}" in errors[0], "the service's error"
    assert "Traceback" not in result.stderr
    assert processes_using(data_dir) == [], "memory, which had started, was stopped"
    assert not (data_dir / "mesh.json").exists()


def test_a_killed_up_leaves_no_service_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "killed"
    up = start_up(data_dir, "--routes", str(_idle_routes(tmp_path)))
    assert all(alive(pid) for pid in up.pids)
    up.process.kill()  # SIGKILL: up cannot stop its services itself
    up.process.communicate(timeout=30)
    deadline = time.monotonic() + scaled(30)
    while processes_using(data_dir):
        assert time.monotonic() < deadline, "services outlived the up that started them"
        time.sleep(0.2)


def _idle_routes(tmp_path: Path) -> Path:
    """Routes to a provider that is never called (no model is needed to start)."""
    routes = tmp_path / "idle-routes.yaml"
    routes.write_text(
        "routes:\n  default:\n    - name: idle\n      provider: openai_compatible\n"
        "      model: idle\n      base_url: http://127.0.0.1:9/v1\n"
    )
    return routes


def test_sigterm_while_starting_stops_what_had_started(tmp_path: Path) -> None:
    data_dir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [AGENTMESH, "up", "--data-dir", str(data_dir), "--port-base", "0"],
        env={**os.environ, **CLI_ENV},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    memory_log = data_dir / "logs" / "memory.log"
    deadline = time.monotonic() + scaled(60)
    while "service started" not in (memory_log.read_text() if memory_log.exists() else ""):
        assert time.monotonic() < deadline, "memory never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # memory is up, the others are usually still starting
    _, err = process.communicate(timeout=60)
    assert processes_using(data_dir) == [], "SIGTERM left services running"
    if process.returncode == 0:
        # The services start side by side in a few seconds: on a fast machine they may all be
        # up before the signal lands, and then it is an ordinary stop.
        assert "interrupted" not in err, err
        return
    assert process.returncode == 1, err
    assert err.strip().splitlines() == [
        "error: interrupted while starting; nothing is left running"
    ]


@pytest.mark.timeout(scaled(180))  # real SmolLM2 sessions; scaled to the machine
def test_make_runs_demo_shows_an_example_session_then_keeps_serving(tmp_path: Path) -> None:
    """`make run` is `agentmesh up --demo`: the example sessions run on SmolLM2, locally."""
    up = start_up(tmp_path / "demo", "--demo")
    try:
        deadline = time.monotonic() + scaled(120)
        while True:
            listed = up.cli("sessions", "list", "--status", "completed")
            if listed.stdout.count("sessions/") == 2:
                break
            assert time.monotonic() < deadline, listed.stdout + listed.stderr
            time.sleep(0.5)
        assert up.process.poll() is None, "the mesh keeps serving after the example"
        still_served = up.cli("tools")
        assert still_served.returncode == 0
    finally:
        code, out = up.stop(signal.SIGINT)
    assert code == 0, out
    assert "example session" in out
    assert "SmolLM2-135M-Instruct" in out
    assert "Paris" in out, "the factual question is answered"
    assert out.count("final answer") == 2
    assert re.search(r"tokens generated in [0-9.]+ s: [0-9.]+ tokens/s", out)
    assert "usage" in out
    assert "agentmesh keeps running" in out
