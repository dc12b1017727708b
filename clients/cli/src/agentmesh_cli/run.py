"""`agentmesh run GOAL`: start a session and show it live (or as JSON lines), and the live view
that `sessions watch` shares."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.json_format import MessageToJson
from rich.live import Live

from agentmesh.common.v1 import events_pb2, sessions_pb2
from agentmesh_client.client import AgentmeshClient

from .approvals import answer
from .render import SessionView
from .shared import ApiKey, Target, console, errors, fail, go, parse_pairs
from .teams import STRATEGIES, load_session_spec, load_team

#: `agentmesh run` exit code after Ctrl-C cancelled the session (128 + SIGINT, as shells do).
EXIT_CANCELLED = 130


def run(
    goal: Annotated[str, typer.Argument(help="what the agents should achieve")],
    strategy: Annotated[str, typer.Option(help=", ".join(STRATEGIES))] = "",
    agents: Annotated[Path | None, typer.Option(help="YAML file of agents")] = None,
    max_rounds: Annotated[int, typer.Option(help="rounds for round-robin")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one event per line")] = False,
    context: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE session metadata (repeatable): user, collection_id, document_ids, ..."
        ),
    ] = None,
    target: Target = "",
    api_key: ApiKey = "",
) -> None:
    """Start a session for GOAL and show it live; Ctrl-C cancels it.

    The agents file may also say how the team works (strategy, selector, handoff, pipeline,
    termination, limits; see examples/). A tool call that needs approval is asked y/n on a
    terminal; without one the command stops, saying how to answer it.

    Exit code: 0 completed, 1 failed or cancelled elsewhere (or an error), 130 cancelled with
    Ctrl-C (after showing the `session_cancelled` usage).
    """
    if strategy and strategy not in STRATEGIES:
        raise fail(f"--strategy must be one of {', '.join(STRATEGIES)}")
    chosen = STRATEGIES.get(strategy, sessions_pb2.STRATEGY_UNSPECIFIED)
    metadata = parse_pairs(context, "--context")

    async def use(client: AgentmeshClient) -> None:
        stored, team = load_team(agents) if agents is not None else ([], [])
        spec = load_session_spec(agents) if agents is not None else sessions_pb2.Session()
        strategy = chosen or spec.strategy
        if not (team or stored) and strategy == sessions_pb2.STRATEGY_UNSPECIFIED:
            strategy = sessions_pb2.STRATEGY_ROUTER
        limits = spec.limits
        if max_rounds:
            limits.max_rounds = max_rounds
        session = await client.create_session(
            goal=goal,
            agents=stored,
            inline_agents=team,
            strategy=strategy,
            limits=limits,
            termination=spec.termination,
            pipeline=spec.pipeline,
            selector=spec.selector,
            handoff=spec.handoff,
            metadata=metadata,
        )
        await show(client, session.name, client.run(session.name), as_json)

    go(target, api_key, use)


async def show(
    client: AgentmeshClient,
    session: str,
    events: AsyncIterator[events_pb2.SessionEvent],
    as_json: bool,
    *,
    cancel_on_interrupt: bool = True,
) -> None:
    """Show a session's events (live view, or one JSON line each) to its end; Ctrl-C cancels
    it (`cancel_on_interrupt`) or stops following it."""
    view = SessionView(session=session)
    interrupted = asyncio.Event()
    user_cancelled = False
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        with contextlib.ExitStack() as stack:
            live = (
                None
                if as_json
                else stack.enter_context(Live(view.render(), console=console, refresh_per_second=8))
            )
            iterator = events.__aiter__()
            while True:
                next_event = asyncio.ensure_future(iterator.__anext__())
                stopper = asyncio.ensure_future(interrupted.wait())
                done, _ = await asyncio.wait(
                    {next_event, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                stopper.cancel()
                if next_event not in done:
                    next_event.cancel()
                    if cancel_on_interrupt:
                        user_cancelled = True
                        await client.cancel_session(session)
                        iterator = client.events(session, after_seq=view.last_seq).__aiter__()
                        interrupted.clear()
                        cancel_on_interrupt = False
                        continue
                    return
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    break
                view.apply(event)
                if as_json:
                    print(MessageToJson(event, indent=None), flush=True)
                elif live is not None:
                    live.update(view.render())
                if event.HasField("approval_requested"):
                    if live is not None:
                        live.stop()  # the question needs the terminal
                    await answer(
                        client,
                        session,
                        event.approval_requested.approval,
                        interactive=sys.stdin.isatty(),
                        prompt=_ask,
                    )
                    if live is not None:
                        live.start()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if user_cancelled:
        raise typer.Exit(EXIT_CANCELLED)
    if not view.outcome.startswith("completed"):
        raise typer.Exit(1)


async def _ask(question: str) -> str:
    """Ask on the terminal (stderr, so `--json` output stays clean); the typed line."""
    errors.print(question, end="", markup=False, highlight=False)
    return await asyncio.to_thread(sys.stdin.readline)
