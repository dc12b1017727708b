"""Built-in agent types and their default prompts.

An agent definition that leaves a prompt empty gets its type's default, so
`AgentDefinition(type=PLANNER)` alone is a working planner. Defaults are plain text with the
standard template variables; they pass `parse_template` like user-written ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class AgentKind(Enum):
    """The role an agent plays (mirrors `agentmesh.common.v1.AgentType`)."""

    PLANNER = "planner"
    EXECUTOR = "executor"
    RESEARCH = "research"
    SYNTHESIS = "synthesis"
    VALIDATION = "validation"
    CRITIC = "critic"
    CUSTOM = "custom"


@dataclass(frozen=True)
class DefaultPrompts:
    """Default prompt texts of one agent type."""

    system: str
    user_template: str
    context_instructions: str
    # Answer length when the agent's generation config leaves max_tokens unset: sized so a
    # small local model (SmolLM2-135M, ~30 tokens/s on 2 CPU cores) answers in seconds.
    max_tokens: int = 400
    # Built-in tools agents of the type get unless their definition lists them already.
    tools: tuple[str, ...] = ()


_CONTEXT = (
    "Use the context and earlier messages when they help; say so when they are missing or "
    "contradict each other rather than guessing."
)

DEFAULT_PROMPTS: dict[AgentKind, DefaultPrompts] = {
    AgentKind.PLANNER: DefaultPrompts(
        system=(
            "You are a planner. Split the goal into 2 to 6 short tasks, one for each part of "
            "the goal. Each task has an id (t1, t2, ...) and a one-sentence description of "
            "what to write; optionally the agent type best suited to it (executor, research, "
            "synthesis, validation or critic) and depends_on, the ids of earlier tasks whose "
            "output it needs. Tasks without dependencies run in parallel."
            # No example plan: SmolLM2-135M copied an example's tasks into its own plans.
        ),
        user_template="Goal: {goal}\n\nContext:\n{context}",
        context_instructions=_CONTEXT,
        max_tokens=400,
    ),
    AgentKind.EXECUTOR: DefaultPrompts(
        system=(
            "You are an executor. Carry out exactly the task you are given, using the tools "
            "offered when they help, and answer with the result itself: no preamble."
        ),
        user_template="Task: {input}\n\nOverall goal: {goal}\n\nContext:\n{context}",
        context_instructions=_CONTEXT,
        max_tokens=200,
    ),
    AgentKind.RESEARCH: DefaultPrompts(
        system=(
            "You are a researcher. Gather the facts the task needs, note where each comes "
            "from, separate what is known from what is assumed, and summarize briefly. When "
            "you are given numbered sources, answer from them and cite them as [1], [2]."
        ),
        user_template="Research: {input}\n\nOverall goal: {goal}\n\nContext:\n{context}",
        context_instructions=_CONTEXT,
        max_tokens=250,
        # The user's documents: searched before each turn, and on demand (knowledge.py).
        tools=("search_documents",),
    ),
    AgentKind.SYNTHESIS: DefaultPrompts(
        system=(
            "You are a writer. Combine the task results you are given into one complete, "
            "well-organized answer to the goal. Resolve overlaps, keep every fact you were "
            "given, and do not add facts you were not given."
        ),
        user_template="Goal: {goal}\n\nResults:\n{input}",
        context_instructions=_CONTEXT,
        max_tokens=400,
    ),
    AgentKind.VALIDATION: DefaultPrompts(
        system=(
            "You are a validator. Decide whether the answer fully achieves the goal. Start "
            "your reply with GOAL REACHED or GOAL NOT REACHED, then give the reasons."
        ),
        user_template="Goal: {goal}\n\nAnswer to check:\n{input}",
        context_instructions=_CONTEXT,
        max_tokens=120,
    ),
    AgentKind.CRITIC: DefaultPrompts(
        system=(
            "You are a critic. Point out the most important errors, gaps and risks in the "
            "latest contribution, most serious first, each with a concrete fix."
        ),
        user_template="Goal: {goal}\n\nRound {round}. Review the conversation so far.",
        context_instructions=_CONTEXT,
        max_tokens=200,
    ),
    AgentKind.CUSTOM: DefaultPrompts(
        system="You are a helpful agent working with other agents towards a shared goal.",
        user_template="Goal: {goal}\n\n{input}",
        context_instructions=_CONTEXT,
    ),
}


def with_defaults(
    kind: AgentKind, *, system: str, user_template: str, context_instructions: str
) -> DefaultPrompts:
    """The given prompts, each empty one replaced by the type's default."""
    defaults = DEFAULT_PROMPTS[kind]
    return DefaultPrompts(
        system=system or defaults.system,
        user_template=user_template or defaults.user_template,
        context_instructions=context_instructions or defaults.context_instructions,
        max_tokens=defaults.max_tokens,
        tools=defaults.tools,
    )
