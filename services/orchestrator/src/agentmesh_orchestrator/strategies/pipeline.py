"""PIPELINE: a fixed list of stages, each an agent fed from `{goal}` and earlier stage outputs.

Sequential: each stage's input template may name earlier stages' outputs (`{stage_name}`);
the last stage's answer is the session's. Parallel: every stage runs at once on the goal; then
the synthesis agent (`pipeline.synthesis_agent`, else the first SYNTHESIS-type member that is
no stage) merges their outputs in one last turn, as `Execute(mode=PARALLEL)` promises; with
no synthesis agent the outputs are joined under their stage names. When the stages are not
listed, every member but the synthesis agent is one.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Mapping, Sequence

from agentmesh.common.v1 import sessions_pb2
from agentmesh_common import InvalidArgument
from agentmesh_orchestrator.agents import SessionAgent
from agentmesh_orchestrator.domain.agent_types import AgentKind
from agentmesh_orchestrator.domain.templates import TemplateValues
from agentmesh_orchestrator.runtime import Ending, Runtime
from agentmesh_orchestrator.termination import Terminated
from agentmesh_orchestrator.turns import Turn

from .base import Strategy, require_agents


class Pipeline(Strategy):
    """Stages in order (or all at once), each one agent's turn."""

    kind = sessions_pb2.STRATEGY_PIPELINE

    def validate(self, session: sessions_pb2.Session, agents: Sequence[SessionAgent]) -> None:
        require_agents(agents)
        known = {a.name for a in agents} | {a.label for a in agents}
        earlier: list[str] = []
        for i, stage in enumerate(session.pipeline.stages):
            if stage.agent not in known:
                raise InvalidArgument.for_field(
                    f"session.pipeline.stages[{i}].agent", f"{stage.agent} is not a member"
                )
            try:
                render_stage_input(stage.input_template, "", dict.fromkeys(earlier, ""))
            except (ValueError, IndexError, KeyError) as exc:
                raise InvalidArgument.for_field(
                    f"session.pipeline.stages[{i}].input_template", str(exc)
                ) from None
            earlier.append(stage.stage_name or stage.agent.rsplit("/", 1)[-1])
        merger = session.pipeline.synthesis_agent
        if merger:
            field = "session.pipeline.synthesis_agent"
            if not session.pipeline.parallel:
                raise InvalidArgument.for_field(field, "only a parallel pipeline is synthesized")
            if merger not in known:
                raise InvalidArgument.for_field(field, f"{merger} is not a member")
            named = {a.name for a in agents if merger in (a.name, a.label)}
            for i, stage in enumerate(session.pipeline.stages):
                if {a.name for a in agents if stage.agent in (a.name, a.label)} & named:
                    raise InvalidArgument.for_field(
                        field, f"{merger} is stage {i}; the synthesis agent merges the stages"
                    )

    async def run(self, rt: Runtime, *, single_step: bool) -> Ending:
        spec = rt.session.pipeline
        synthesizer = _synthesizer(rt) if spec.parallel else None
        stages = list(spec.stages) or [
            sessions_pb2.PipelineStage(agent=a.name) for a in rt.agents if a is not synthesizer
        ]
        if not stages and synthesizer is not None:  # nothing to merge: it is the only stage
            stages, synthesizer = [sessions_pb2.PipelineStage(agent=synthesizer.name)], None
        outputs: dict[str, str] = {}

        async def run_stage(stage: sessions_pb2.PipelineStage) -> tuple[str, str]:
            agent = rt.member(stage.agent, "pipeline.stages.agent")
            stage_name = stage.stage_name or agent.label
            stage_input = render_stage_input(stage.input_template, rt.session.goal, outputs)
            outcome = await rt.remembered_turn(
                Turn(
                    agent=agent,
                    prompt=agent.user_template.render(
                        TemplateValues(
                            goal=rt.session.goal, input=stage_input, metadata=rt.session.metadata
                        )
                    ),
                    history=(),
                    tools=rt.toolbox(agent, read_only=False),
                    idempotency_key=rt.key(f"stage-{stage_name}"),
                    remember=True,
                )
            )
            return stage_name, outcome.text

        if spec.parallel:
            try:
                async with asyncio.TaskGroup() as group:
                    pending = [group.create_task(run_stage(stage)) for stage in stages]
            except* Terminated as stopped:  # one stage's turn ended the session: the others stop
                raise stopped.exceptions[0] from None
            results = [task.result() for task in pending]
            outputs.update(results)
            if synthesizer is not None:
                return Ending(await _synthesize(rt, synthesizer, results), "pipeline_done")
            answer = "\n\n".join(f"## {name}\n{text}" for name, text in results)
            return Ending(answer, "pipeline_done")
        last = ""
        for stage in stages:
            name, last = await run_stage(stage)
            outputs[name] = last
        return Ending(last, "pipeline_done")


def _synthesizer(rt: Runtime) -> SessionAgent | None:
    """The agent that merges a parallel pipeline's outputs, if the session has one."""
    spec = rt.session.pipeline
    if spec.synthesis_agent:
        return rt.member(spec.synthesis_agent, "pipeline.synthesis_agent")
    staged = {stage.agent for stage in spec.stages}
    for agent in rt.agents:
        if agent.kind is AgentKind.SYNTHESIS and not staged & {agent.name, agent.label}:
            return agent
    return None


async def _synthesize(
    rt: Runtime, synthesizer: SessionAgent, results: Sequence[tuple[str, str]]
) -> str:
    """One turn of the synthesis agent over the stages' outputs; its answer is the session's."""
    merged = "\n\n".join(f"### {name}\n{text}" for name, text in results)
    outcome = await rt.remembered_turn(
        Turn(
            agent=synthesizer,
            prompt=synthesizer.user_template.render(
                TemplateValues(goal=rt.session.goal, input=merged, metadata=rt.session.metadata)
            ),
            history=(),
            tools=rt.toolbox(synthesizer, read_only=True),
            idempotency_key=rt.key("synthesis"),
            remember=True,
        )
    )
    return outcome.text


def render_stage_input(template: str, goal: str, outputs: Mapping[str, str]) -> str:
    """A pipeline stage's input: `{goal}` and `{stage_name}` of earlier stages."""
    if not template:
        return "\n\n".join([goal, *outputs.values()]) if outputs else goal
    values = {"goal": goal, **outputs}
    return string.Formatter().vformat(template, (), _Missing(values))


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""
