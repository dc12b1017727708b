"""Every built-in agent type has default prompts that are valid templates."""

from __future__ import annotations

import pytest

from agentmesh_orchestrator.domain.agent_types import DEFAULT_PROMPTS, AgentKind, with_defaults
from agentmesh_orchestrator.domain.templates import TemplateValues, parse_template


@pytest.mark.parametrize("kind", list(AgentKind))
def test_default_prompts_exist_and_parse(kind: AgentKind) -> None:
    prompts = DEFAULT_PROMPTS[kind]
    assert prompts.system
    template = parse_template(prompts.user_template, "agent.prompts.user_template")
    rendered = template.render(TemplateValues(goal="the goal", input="the input"))
    assert "the goal" in rendered


def test_given_prompts_win_over_defaults_and_empty_ones_are_filled() -> None:
    prompts = with_defaults(
        AgentKind.CRITIC, system="Be terse.", user_template="", context_instructions=""
    )
    assert prompts.system == "Be terse."
    assert prompts.user_template == DEFAULT_PROMPTS[AgentKind.CRITIC].user_template
