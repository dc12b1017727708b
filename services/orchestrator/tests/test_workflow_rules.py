"""The workflow rule language and the token ↔ agent mappings (issue 14)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agentmesh_orchestrator.workflows.mapping import (
    MappingError,
    RunResult,
    TokenView,
    apply_output,
    check_input_mapping,
    check_output_mapping,
    input_variables,
)
from agentmesh_orchestrator.workflows.rules import RuleError, all_match, parse

ROOTS = ("data", "metadata")
TOKEN = {
    "data": {"content": "a report", "score": 0.85, "tags": ["pdf", "draft"], "pages": 12},
    "metadata": {"status": "unclassified", "type": "pdf", "flag": True, "empty": ""},
}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("exists(data.content)", True),
        ("exists(data.review)", False),
        ("not exists(data.review)", True),
        ('metadata.status == "unclassified"', True),
        ("metadata.status == 'classified'", False),
        ('metadata.status != "classified"', True),
        ("data.score >= 0.8", True),
        ("data.score > 0.85", False),
        ("data.pages < 13 and data.pages <= 12", True),
        ('metadata.type in ["pdf", "doc"]', True),
        ('metadata.type not in ["pdf", "doc"]', False),
        ('"draft" in data.tags', True),
        ('"rep" in data.content', True),
        ('data.score > 0.9 or metadata.type == "pdf"', True),
        ("not (data.score > 0.9 or data.pages > 100)", True),
        ("metadata.flag", True),
        ("metadata.empty", False),
        ("data.missing", False),
        # A missing field is null: only != holds.
        ("data.missing == 1", False),
        ("data.missing != 1", True),
        ("data.missing < 1", False),
        # Ordering needs two numbers or two strings; a boolean is not a number.
        ('data.pages > "1"', False),
        ("metadata.flag == 1", False),
        ("data.tags.0 == 'pdf'", True),
        ("exists(data.tags.5)", False),
        ("true and not false and null == null", True),
        ("data.pages == 12.0", True),
        ("-1 < 0", True),
        ('"a\\"b" == \'a"b\'', True),
    ],
)
def test_a_rule_evaluates_against_a_token(rule: str, expected: bool) -> None:
    assert parse(rule, ROOTS).matches(TOKEN) is expected


def test_and_binds_tighter_than_or() -> None:
    # true or (false and false) = true; (true or false) and false = false.
    assert parse("true or false and false", ROOTS).matches({}) is True


def test_a_list_of_rules_is_their_conjunction() -> None:
    rules = [parse("exists(data.content)", ROOTS), parse('metadata.status == "x"', ROOTS)]
    assert all_match(rules, TOKEN) is False
    assert all_match(rules[:1], TOKEN) is True
    assert all_match([], TOKEN) is True


def test_a_rule_lists_the_paths_it_reads() -> None:
    rule = parse("exists(data.content) and metadata.type in ['a'] or data.x.y > 1", ROOTS)
    assert [str(path) for path in rule.paths] == ["data.content", "metadata.type", "data.x.y"]


@pytest.mark.parametrize(
    ("rule", "message", "column"),
    [
        ("", "expected a value", 1),
        ("data.content ==", "expected a value", 16),
        ("exists(data.content", "expected ')'", 20),
        ("dta.content == 1", "unknown name 'dta'", 1),
        ("data.score >> 1", "expected a value", 13),
        ("data.score = 1", "unexpected character '='", 12),
        ("data.content == 'open", "unexpected character", 17),
        ("exists(1)", "expected a path", 8),
        ("data. == 1", "expected a field name", 7),
        ("data.x == 1 data.y", "unexpected text after the rule", 13),
        ("__import__('os')", "unknown name '__import__'", 1),
        ("(" * 40 + "true" + ")" * 40, "nests deeper", 34),
        ("1e999 > 0", "number out of range", 1),
    ],
)
def test_a_bad_rule_says_what_and_where(rule: str, message: str, column: int) -> None:
    with pytest.raises(RuleError) as error:
        parse(rule, ROOTS)
    assert message in str(error.value)
    assert error.value.column == column


def test_a_rule_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(RuleError, match="longer than"):
        parse("true or " * 600 + "true", ROOTS)


def _token() -> TokenView:
    return TokenView(
        workflow_id="wf1",
        token_id="tok1",
        place="submitted",
        data={"content": "the text", "nested": {"n": 3}},
        metadata={"type": "memo", "priority": 2},
        history_count=1,
    )


def test_input_mapping_gives_the_mapped_and_the_built_in_variables() -> None:
    variables = input_variables(
        {
            "document_content": "data.content",
            "document_type": "metadata.type",
            "priority": "metadata.priority",
            "nested": "data.nested",
            "absent": "data.nope",
        },
        _token(),
    )
    assert variables == {
        "document_content": "the text",
        "document_type": "memo",
        "priority": "2",
        "nested": '{"n":3}',
        "absent": "",
        "input_data": '{"content":"the text","nested":{"n":3}}',
        "token_id": "tok1",
        "current_place": "submitted",
        "token_metadata": '{"type":"memo","priority":2}',
        "workflow_id": "wf1",
        "history_count": "1",
    }


def test_output_mapping_writes_output_fields_and_run_fields_into_copies() -> None:
    token = _token()
    finished = datetime(2026, 12, 5, 18, 30, tzinfo=UTC)
    result = RunResult(
        agent_id="agents/reviewer",
        session_id="sessions/s1",
        text='{"assessment": "ok"}',
        finished_at=finished,
        output={"assessment": "approve", "confidence_score": 0.9, "scores": {"total": 7}},
    )
    changes = apply_output(
        {
            "data.review_result": "assessment",
            "data.review_score": "confidence_score",
            "data.detail.total": "scores.total",
            "metadata.reviewer": "agent_id",
            "metadata.review_timestamp": "timestamp",
            "metadata.session": "session_id",
            "data.raw": "text",
        },
        result,
        token,
    )
    assert changes.data == {
        "content": "the text",
        "nested": {"n": 3},
        "review_result": "approve",
        "review_score": 0.9,
        "detail": {"total": 7},
        "raw": '{"assessment": "ok"}',
    }
    assert changes.metadata == {
        "type": "memo",
        "priority": 2,
        "reviewer": "agents/reviewer",
        "review_timestamp": "2026-12-05T18:30:00Z",
        "session": "sessions/s1",
    }
    assert token.data == {"content": "the text", "nested": {"n": 3}}, "the token is untouched"


def test_output_mapping_reaches_a_field_named_like_a_run_field_through_output() -> None:
    result = RunResult("a", "s", "answer", datetime.now(UTC), output={"text": "field"})
    changes = apply_output({"data.a": "text", "data.b": "output.text"}, result, _token())
    assert (changes.data["a"], changes.data["b"]) == ("answer", "field")


def test_output_mapping_errors_name_the_target() -> None:
    no_output = RunResult("a", "s", "plain", datetime.now(UTC))
    with pytest.raises(MappingError, match="no structured output") as error:
        apply_output({"data.x": "category"}, no_output, _token())
    assert error.value.target == "data.x"
    with_output = RunResult("a", "s", "{}", datetime.now(UTC), output={"other": 1})
    with pytest.raises(MappingError, match="no field 'category'"):
        apply_output({"data.x": "category"}, with_output, _token())
    with pytest.raises(MappingError, match=r"data\.content holds a value that is not an object"):
        apply_output({"data.content.deep": "other"}, with_output, _token())


def test_mappings_are_checked_at_creation() -> None:
    assert check_input_mapping({"doc": "data.content", "kind": "metadata.type"}, "m") == []
    bad_inputs = check_input_mapping(
        {"doc": "content", "token_id": "data.id", "bad name": "data.x"}, "t[0].input_mapping"
    )
    assert [(v.field, v.message) for v in bad_inputs] == [
        ("t[0].input_mapping[doc]", "'content' is not a path under data. or metadata."),
        ("t[0].input_mapping[token_id]", "is a built-in variable"),
        ("t[0].input_mapping", "'bad name' is not a variable name"),
    ]
    assert check_output_mapping({"data.x": "category", "metadata.by": "agent_id"}, "o") == []
    bad_outputs = check_output_mapping({"data": "x", "token.x": "y", "data.y": "a b"}, "o")
    assert [v.field for v in bad_outputs] == ["o", "o", "o[data.y]"]
