"""`agentmesh sessions list|show|watch|cancel|approve|reject`."""

from __future__ import annotations

from typing import Annotated

import typer

from agentmesh.common.v1 import sessions_pb2
from agentmesh_client.client import AgentmeshClient

from .render import status_name, usage_table
from .run import show
from .shared import (
    ApiKey,
    AsJson,
    Target,
    console,
    enum_value,
    full_name,
    go,
    print_json,
    print_rows,
)

sessions_app = typer.Typer(no_args_is_help=True, help="Inspect, follow and cancel sessions.")


def _session(name: str) -> str:
    return full_name("sessions", name)


@sessions_app.command("list")
def sessions_list(
    status: Annotated[
        str, typer.Option(help="pending, running, completed, failed, cancelled")
    ] = "",
    as_json: AsJson = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Sessions, newest first."""
    wanted = enum_value(sessions_pb2.SessionStatus, "SESSION_STATUS_", status, "--status")

    async def use(client: AgentmeshClient) -> None:
        sessions = [s async for s in client.list_sessions(status=wanted)]
        if as_json:
            print_json(sessions)
            return
        print_rows(
            ("session", "status", "strategy", "goal", "tokens"),
            [
                (
                    s.name,
                    status_name(s.status),
                    sessions_pb2.Strategy.Name(s.strategy).removeprefix("STRATEGY_").lower(),
                    s.goal[:60],
                    str(s.usage.total_tokens),
                )
                for s in sessions
            ],
            # Names are copied into other commands: never cut one (the goal wraps instead).
            keep_whole=("session",),
        )

    go(target, api_key, use)


@sessions_app.command("show")
def sessions_show(
    name: str, as_json: AsJson = False, target: Target = "", api_key: ApiKey = ""
) -> None:
    """A session with its agents, tasks and usage."""

    async def use(client: AgentmeshClient) -> None:
        reply = await client.get_session(_session(name))
        if as_json:
            print_json(reply)
            return
        session = reply.session
        console.print(f"{session.name}  {status_name(session.status)}", style="bold")
        console.print(f"goal: {session.goal}")
        console.print(f"agents: {', '.join(a.name for a in reply.agents) or '-'}")
        if reply.tasks:
            print_rows(
                ("task", "status", "agent", "retries"),
                [
                    (
                        task.task_id,
                        sessions_pb2.TaskStatus.Name(task.status)
                        .removeprefix("TASK_STATUS_")
                        .lower(),
                        task.agent,
                        str(task.retry_count),
                    )
                    for task in reply.tasks
                ],
                title="tasks",
            )
        if session.final_answer:
            console.print(f"answer: {session.final_answer}")
        console.print(usage_table({}, session.usage))

    go(target, api_key, use)


@sessions_app.command("watch")
def sessions_watch(
    name: str,
    after_seq: Annotated[int, typer.Option(help="replay events after this seq")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one event per line")] = False,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Replay a session's events, then follow it live."""

    async def use(client: AgentmeshClient) -> None:
        session = _session(name)
        events = client.events(session, after_seq=after_seq)
        await show(client, session, events, as_json, cancel_on_interrupt=False)

    go(target, api_key, use)


@sessions_app.command("cancel")
def sessions_cancel(name: str, target: Target = "", api_key: ApiKey = "") -> None:
    """Cancel a session."""

    async def use(client: AgentmeshClient) -> None:
        session = await client.cancel_session(_session(name))
        console.print(f"{session.name}: {status_name(session.status)}")

    go(target, api_key, use)


@sessions_app.command("approve")
def sessions_approve(
    name: str,
    approval_id: str,
    comment: Annotated[str, typer.Option(help="a note kept with the approval")] = "",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Approve a tool call waiting for approval (its id is in approval_requested)."""

    async def use(client: AgentmeshClient) -> None:
        approval = await client.approve_tool_call(_session(name), approval_id, comment=comment)
        console.print(f"{approval.name}: approved")

    go(target, api_key, use)


@sessions_app.command("reject")
def sessions_reject(
    name: str,
    approval_id: str,
    comment: Annotated[str, typer.Option(help="why; the model is told")] = "",
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Reject a tool call waiting for approval: it does not run."""

    async def use(client: AgentmeshClient) -> None:
        approval = await client.reject_tool_call(_session(name), approval_id, comment=comment)
        console.print(f"{approval.name}: rejected")

    go(target, api_key, use)
