"""The example goal `make run` shows a newcomer: two agents take turns on the local model.

It runs on whatever the default route serves. On the embedded default that is the generated
tiny model, whose text is meaningless by design; what it shows is the machinery: a session is
created, agents stream their turns, every event is numbered and stored, usage is counted.
"""

from __future__ import annotations

from rich.console import Console
from rich.live import Live

from agentmesh.common.v1 import agents_pb2, generation_pb2, sessions_pb2

from .client import AgentmeshClient
from .render import SessionView

DEMO_GOAL = "Plan a one-day team offsite in the mountains."


def demo_agents(route: str = "default") -> list[agents_pb2.AgentDefinition]:
    """A planner-minded optimist and a critic, short answers."""
    config = generation_pb2.GenerationConfig(max_tokens=40, temperature=0.7)
    model = agents_pb2.ModelSelection(route=route)
    return [
        agents_pb2.AgentDefinition(
            name="optimist",
            type=agents_pb2.AGENT_TYPE_CUSTOM,
            model=model,
            generation=config,
            prompts=agents_pb2.AgentPrompts(
                system="You propose concrete, upbeat plans in three sentences."
            ),
        ),
        agents_pb2.AgentDefinition(
            name="critic",
            type=agents_pb2.AGENT_TYPE_CRITIC,
            model=model,
            generation=config,
        ),
    ]


async def run_demo(target: str, api_key: str, console: Console) -> str:
    """Run the example session and draw it live; returns the session's name."""
    console.rule("example session")
    console.print(
        "Two agents take turns on the default route. On the embedded default this is the "
        "generated tiny model: its text is meaningless by design, the machinery is real."
    )
    async with AgentmeshClient(target, api_key=api_key, timeout=60) as client:
        session = await client.create_session(
            goal=DEMO_GOAL,
            inline_agents=demo_agents(),
            strategy=sessions_pb2.STRATEGY_ROUND_ROBIN,
            limits=sessions_pb2.SessionLimits(max_rounds=1),
        )
        view = SessionView(session=session.name)
        with Live(view.render(), console=console, refresh_per_second=8) as live:
            async for event in client.run(session.name):
                view.apply(event)
                live.update(view.render())
    console.print()
    console.print(f"try: agentmesh sessions show {session.name.removeprefix('sessions/')}")
    return session.name
