"""`agentmesh workflows create|list|show|tokens|add-token|fire|watch|delete` and
`agentmesh schedules create|list|show|pause|resume|delete` (file formats: workflow_files.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.json_format import MessageToDict

from agentmesh.workflow.v1 import workflow_pb2
from agentmesh_client.client import AgentmeshClient

from .shared import (
    ApiKey,
    AsJson,
    CliError,
    Target,
    console,
    full_name,
    go,
    print_json,
    print_rows,
)
from .workflow_files import load_schedule, load_workflow

workflows_app = typer.Typer(no_args_is_help=True, help="Workflows: places, transitions, tokens.")
schedules_app = typer.Typer(no_args_is_help=True, help="Schedules that start sessions.")

JsonObject = Annotated[str, typer.Option(help="a JSON object")]


def _object(text: str, option: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{option}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"{option}: expected a JSON object")
    return value


def _token_name(name: str) -> str:
    if name.startswith("workflows/"):
        return name
    raise CliError(f"{name!r}: a token is named workflows/WORKFLOW/tokens/TOKEN")


@workflows_app.command("create")
def workflows_create(
    file: Path,
    validate: Annotated[bool, typer.Option(help="only check the file")] = False,
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Create a workflow from a YAML file (--validate: check it, store nothing)."""

    async def use(client: AgentmeshClient) -> None:
        workflow_id, workflow = load_workflow(file)
        created = await client.create_workflow(
            workflow, workflow_id=workflow_id, validate_only=validate
        )
        if as_json:
            print_json(created)
            return
        console.print("valid" if validate else f"created {created.name}")
        for warning in created.warnings:
            console.print(f"warning: {warning}")

    go(target, api_key, use)


@workflows_app.command("list")
def workflows_list(as_json: AsJson = False, target: Target = "", api_key: ApiKey = "") -> None:
    """Workflows."""

    async def use(client: AgentmeshClient) -> None:
        workflows = await client.list_workflows()
        if as_json:
            print_json(workflows)
            return
        print_rows(
            ("workflow", "name", "places", "transitions", "place agents", "revision"),
            [
                (
                    w.name,
                    w.display_name,
                    str(len(w.places)),
                    str(len(w.transitions)),
                    str(len(w.place_agents)),
                    str(w.revision),
                )
                for w in workflows
            ],
            keep_whole=("workflow",),
        )

    go(target, api_key, use)


@workflows_app.command("show")
def workflows_show(
    name: str, as_json: AsJson = False, target: Target = "", api_key: ApiKey = ""
) -> None:
    """A workflow's places with their token counts, and its transitions."""

    async def use(client: AgentmeshClient) -> None:
        workflow = await client.get_workflow(full_name("workflows", name))
        if as_json:
            print_json(workflow)
            return
        agents = {a.place: a.id for a in workflow.place_agents}
        print_rows(
            ("place", "tokens", "place agent"),
            [
                (p.id, str(workflow.token_counts.get(p.id, 0)), agents.get(p.id, ""))
                for p in workflow.places
            ],
            title=f"{workflow.name} (revision {workflow.revision})",
        )
        print_rows(
            ("transition", "from", "to", "agent", "rules"),
            [
                (
                    t.id,
                    ", ".join(t.from_places),
                    t.to_place,
                    t.agent_execution.agent,
                    " and ".join(t.rules),
                )
                for t in workflow.transitions
            ],
        )

    go(target, api_key, use)


@workflows_app.command("tokens")
def workflows_tokens(
    workflow: str,
    place: Annotated[str, typer.Option(help="only tokens in this place")] = "",
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """A workflow's tokens (oldest first)."""

    async def use(client: AgentmeshClient) -> None:
        tokens = await client.list_tokens(full_name("workflows", workflow), place=place)
        if as_json:
            print_json(tokens)
            return
        print_rows(
            ("token", "place", "moves", "data"),
            [
                (
                    t.name,
                    t.place,
                    str(len(t.history)),
                    json.dumps(MessageToDict(t.data), ensure_ascii=False)[:80],
                )
                for t in tokens
            ],
            keep_whole=("token",),
        )

    go(target, api_key, use)


@workflows_app.command("add-token")
def workflows_add_token(
    workflow: str,
    data: JsonObject = "",
    metadata: JsonObject = "",
    place: Annotated[str, typer.Option(help="start here, not in the initial place")] = "",
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Create a token in a workflow."""

    async def use(client: AgentmeshClient) -> None:
        token = await client.create_token(
            full_name("workflows", workflow),
            data=_object(data, "--data"),
            metadata=_object(metadata, "--metadata"),
            place=place,
        )
        if as_json:
            print_json(token)
        else:
            console.print(f"created {token.name} in {token.place}")

    go(target, api_key, use)


@workflows_app.command("fire")
def workflows_fire(
    token: str,
    transition: str,
    data: JsonObject = "",
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Fire a transition on a token and wait for its outcome (its agent included)."""

    async def use(client: AgentmeshClient) -> None:
        reply = await client.fire_transition(
            _token_name(token), transition, data=_object(data, "--data")
        )
        if as_json:
            print_json(reply)
        elif reply.fired:
            console.print(f"fired {transition}: {reply.token.name} is in {reply.token.place}")
        else:
            console.print(f"{transition} failed: {reply.token.name} stays in {reply.token.place}")
            raise typer.Exit(1)

    go(target, api_key, use)


@workflows_app.command("watch")
def workflows_watch(
    workflow: str,
    token: Annotated[str, typer.Option(help="only this token's events")] = "",
    after: Annotated[int, typer.Option(help="replay events after this seq")] = 0,
    limit: Annotated[int, typer.Option(help="stop after this many events (0: never)")] = 0,
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Replay a workflow's events, then follow them live (Ctrl-C stops)."""

    async def use(client: AgentmeshClient) -> None:
        seen = 0
        async for event in client.workflow_events(
            full_name("workflows", workflow), after_seq=after, token=token
        ):
            if as_json:
                print(json.dumps(MessageToDict(event), ensure_ascii=False), flush=True)
            else:
                print(_describe(event), flush=True)
            seen += 1
            if limit and seen >= limit:
                return

    go(target, api_key, use)


def _describe(event: workflow_pb2.WorkflowEvent) -> str:
    kind = event.WhichOneof("payload") or "event"
    detail = MessageToDict(getattr(event, kind)) if kind != "event" else {}
    token = event.token.rsplit("/", 1)[-1]
    return f"{event.seq:>5} {kind:<22} {token:<16} {json.dumps(detail, ensure_ascii=False)}"


@workflows_app.command("delete")
def workflows_delete(
    name: str,
    force: Annotated[bool, typer.Option(help="also delete its tokens")] = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Delete a workflow."""

    async def use(client: AgentmeshClient) -> None:
        full = full_name("workflows", name)
        await client.delete_workflow(full, force=force)
        console.print(f"deleted {full}")

    go(target, api_key, use)


@schedules_app.command("create")
def schedules_create(
    file: Path, as_json: AsJson = False, target: Target = "", api_key: ApiKey = ""
) -> None:
    """Create a schedule from a YAML file."""

    async def use(client: AgentmeshClient) -> None:
        schedule_id, schedule = load_schedule(file)
        created = await client.create_schedule(schedule, schedule_id=schedule_id)
        if as_json:
            print_json(created)
        else:
            first = created.next_run_time.ToJsonString() if created.next_run_time.seconds else "-"
            console.print(f"created {created.name}; first run {first}")

    go(target, api_key, use)


@schedules_app.command("list")
def schedules_list(as_json: AsJson = False, target: Target = "", api_key: ApiKey = "") -> None:
    """Schedules."""

    async def use(client: AgentmeshClient) -> None:
        schedules = await client.list_schedules()
        if as_json:
            print_json(schedules)
            return
        print_rows(
            ("schedule", "trigger", "runs", "next run", "paused"),
            [
                (
                    s.name,
                    s.cron or f"every {s.interval.ToJsonString()}",
                    f"{s.runs_started}/{s.max_runs or '∞'}",
                    s.next_run_time.ToJsonString() if s.next_run_time.seconds else "-",
                    "yes" if s.paused else "",
                )
                for s in schedules
            ],
            keep_whole=("schedule",),
        )

    go(target, api_key, use)


@schedules_app.command("show")
def schedules_show(
    name: str, as_json: AsJson = False, target: Target = "", api_key: ApiKey = ""
) -> None:
    """A schedule with its recent sessions."""

    async def use(client: AgentmeshClient) -> None:
        schedule = await client.get_schedule(full_name("schedules", name))
        if as_json:
            print_json(schedule)
            return
        trigger = schedule.cron or f"every {schedule.interval.ToJsonString()}"
        upcoming = schedule.next_run_time.ToJsonString() if schedule.next_run_time.seconds else "-"
        console.print(f"{schedule.name}: {trigger}, {schedule.runs_started} runs so far")
        console.print(f"next run: {upcoming}{' (paused)' if schedule.paused else ''}")
        console.print(f"goal: {schedule.session_template.goal}")
        for session in schedule.recent_sessions:
            console.print(f"  {session}")

    go(target, api_key, use)


def _pause(name: str, paused: bool, target: str, api_key: str) -> None:
    async def use(client: AgentmeshClient) -> None:
        schedule = await client.set_schedule_paused(full_name("schedules", name), paused)
        console.print(f"{'paused' if schedule.paused else 'resumed'} {schedule.name}")

    go(target, api_key, use)


@schedules_app.command("pause")
def schedules_pause(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Pause a schedule: no runs start until it is resumed."""
    _pause(name, True, target, api_key)


@schedules_app.command("resume")
def schedules_resume(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Resume a paused schedule."""
    _pause(name, False, target, api_key)


@schedules_app.command("delete")
def schedules_delete(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Delete a schedule (runs already started go on)."""

    async def use(client: AgentmeshClient) -> None:
        full = full_name("schedules", name)
        await client.delete_schedule(full)
        console.print(f"deleted {full}")

    go(target, api_key, use)
