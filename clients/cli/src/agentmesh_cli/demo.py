"""The example `make run` shows a newcomer: real answers, streamed live, with their speed.

It runs on whatever the default route serves. On the embedded default that is the local
runner's SmolLM2-135M-Instruct: a small model that answers short questions well and reasons
poorly, so the examples are sized for it. Two sessions on the router strategy:

1. a factual question, which the router gives to one agent;
2. a goal with several parts, which goes through analysis, a validated plan, tasks run in
   parallel and a synthesis of their results.

After each session: the answer, the usage table, and tokens per second of generation.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live

from agentmesh.common.v1 import agents_pb2, events_pb2, generation_pb2, sessions_pb2
from agentmesh_client.client import AgentmeshClient

from .render import SessionView

DEMO_QUESTION = "What is the capital of France?"
DEMO_GOAL = (
    "Write a short guide to keeping a houseplant alive: where to put it, how often to water"
    " it, and when to repot it."
)


def demo_agents(route: str = "default") -> list[agents_pb2.AgentDefinition]:
    """The planned example's team: a planner, an executor and a writer, short answers."""
    model = agents_pb2.ModelSelection(route=route)

    def agent(
        name: str, kind: agents_pb2.AgentType.ValueType, tokens: int
    ) -> agents_pb2.AgentDefinition:
        return agents_pb2.AgentDefinition(
            name=name,
            type=kind,
            model=model,
            generation=generation_pb2.GenerationConfig(max_tokens=tokens, temperature=0.0),
        )

    return [
        agent("planner", agents_pb2.AGENT_TYPE_PLANNER, 300),
        agent("executor", agents_pb2.AGENT_TYPE_EXECUTOR, 120),
        agent("writer", agents_pb2.AGENT_TYPE_SYNTHESIS, 200),
    ]


async def run_demo(target: str, api_key: str, console: Console) -> list[str]:
    """Run the example sessions and draw them live; returns the sessions' names."""
    console.rule("example sessions")
    console.print(
        "The router strategy on the default route. On the embedded default that is "
        "SmolLM2-135M-Instruct on this machine's local runner: small, so it answers simple "
        "questions well and reasons poorly."
    )
    names = []
    async with AgentmeshClient(target, api_key=api_key, timeout=120) as client:
        for goal, agents, limits in (
            (DEMO_QUESTION, [], sessions_pb2.SessionLimits()),
            (DEMO_GOAL, demo_agents(), sessions_pb2.SessionLimits(max_plan_tasks=3)),
        ):
            console.print()
            session = await client.create_session(
                goal=goal,
                inline_agents=agents,
                strategy=sessions_pb2.STRATEGY_ROUTER,
                limits=limits,
            )
            view = SessionView(session=session.name)
            speed = _Speed()
            with Live(view.render(), console=console, refresh_per_second=8) as live:
                async for event in client.run(session.name):
                    view.apply(event)
                    speed.see(event)
                    live.update(view.render())
            console.print()
            console.print(speed.summary(), highlight=False)
            names.append(session.name)
    console.print()
    console.print(f"try: agentmesh sessions show {names[-1].removeprefix('sessions/')}")
    return names


class _Speed:
    """Tokens per second of generation: completion tokens over the time models streamed."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0

    def see(self, event: events_pb2.SessionEvent) -> None:
        now = time.monotonic()
        if event.HasField("content_delta"):
            self.first = self.first or now
            self.last = now
        elif event.HasField("message_completed"):
            self.tokens += event.message_completed.usage.completion_tokens

    def summary(self) -> str:
        took = time.monotonic() - self.started
        if self.first is None or self.last is None or self.last <= self.first:
            return f"{self.tokens} tokens generated in {took:.1f} s"
        rate = self.tokens / (self.last - self.first)
        return (
            f"{self.tokens} tokens generated in {took:.1f} s: {rate:.1f} tokens/s while streaming"
        )
