"""Prompt templates are validated at definition time and render deterministically."""

from __future__ import annotations

import pytest

from agentmesh_common import InvalidArgument
from agentmesh_orchestrator.domain.templates import (
    TemplateValues,
    check_metadata,
    parse_template,
)

FIELD = "agent.prompts.user_template"


def test_renders_standard_variables_and_metadata() -> None:
    template = parse_template(
        "Goal: {goal}\nRound {round} ({history_count} earlier) for {metadata.customer}: {{ok}}",
        FIELD,
    )
    text = template.render(
        TemplateValues(goal="ship it", round=2, history_count=5, metadata={"customer": "acme"})
    )
    assert text == "Goal: ship it\nRound 2 (5 earlier) for acme: {ok}"
    assert template.variables == {"goal", "round", "history_count", "metadata.customer"}
    assert template.metadata_keys == {"customer"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Do {task}", "unknown variable {task}"),
        ("Do {}", "positional"),
        ("Do {0}", "positional"),
        ("Do {goal!r}", "conversion or format spec"),
        ("Do {goal:>10}", "conversion or format spec"),
        ("Do {goal", "malformed template"),
        ("Do {metadata.}", "unknown variable"),
        ("Do {goal.upper}", "unknown variable"),
    ],
)
def test_rejects_bad_templates_naming_the_field(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_template(text, FIELD)
    assert fragment in caught.value.message
    assert [v.field for v in caught.value.violations] == [FIELD]


def test_metadata_keys_must_exist_in_the_session() -> None:
    template = parse_template("for {metadata.customer} in {metadata.region}", FIELD)
    check_metadata(template, {"customer": "a", "region": "eu"}, FIELD)
    with pytest.raises(InvalidArgument, match="region"):
        check_metadata(template, {"customer": "a"}, FIELD)
