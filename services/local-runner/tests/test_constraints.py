"""Constrained decoding: whatever the logits say, the text matches the schema.

Random logits are the harshest model there is; sampled under the constraint they must still
give JSON that parses and validates, for a nested object, an enum and an array of objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer

from agentmesh_runner.constraints import ConstraintCompiler, schema_problem

NESTED = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "owner"],
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "owner": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "active"],
            "properties": {"id": {"type": "integer"}, "active": {"type": "boolean"}},
        },
    },
}
ENUM = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind"],
    "properties": {"kind": {"enum": ["simple", "tool", "complex"]}},
}
ARRAY_OF_OBJECTS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tasks"],
    "properties": {
        "tasks": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "done"],
                "properties": {
                    "id": {"type": "string", "pattern": "^t[0-9]$"},
                    "done": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}},
                },
            },
        }
    },
}
# Items fixed by position (what a planner is sent once its own task ids were unusable):
# each item's id is a constant, and it may refer only to earlier ones.
POSITIONAL = {
    "type": "array",
    "minItems": 1,
    "prefixItems": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["id"],
            "properties": {
                "id": {"const": f"t{i}"},
                "after": {"type": "array", "items": {"enum": [f"t{j}" for j in range(1, i)]}},
            },
        }
        for i in (1, 2, 3)
    ],
    "items": False,
}
POSITIONAL["prefixItems"][0]["properties"]["after"] = {"type": "array", "maxItems": 0}  # type: ignore[index]
SCHEMAS = {
    "nested": NESTED,
    "enum": ENUM,
    "array_of_objects": ARRAY_OF_OBJECTS,
    "positional": POSITIONAL,
}


@pytest.fixture(scope="module")
def compiler(tiny_model: Path) -> tuple[ConstraintCompiler, Any]:
    tokenizer = load_tokenizer(tiny_model)
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    return ConstraintCompiler(tokenizer._tokenizer, vocab, tokenizer.eos_token_ids), tokenizer


def sample_constrained(
    compiler: ConstraintCompiler, tokenizer: Any, schema: dict[str, Any], seed: int
) -> tuple[str, bool]:
    """Text sampled from random logits under the schema; True if the grammar completed."""
    constraint = compiler.json(json.dumps(schema))
    rng = np.random.default_rng(seed)
    vocab = len(constraint.allowed())
    tokens: list[int] = []
    for _ in range(200):
        logits = rng.standard_normal(vocab).astype(np.float32) * 3
        constraint.mask(logits)
        token = int(np.argmax(logits))
        if token in tokenizer.eos_token_ids:
            return tokenizer.decode(tokens), True
        constraint.advance(token)
        tokens.append(token)
        if constraint.finished:
            return tokenizer.decode(tokens), True
    return tokenizer.decode(tokens), False


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_logits_under_a_schema_always_give_valid_json(
    compiler: tuple[ConstraintCompiler, Any], name: str
) -> None:
    schema = SCHEMAS[name]
    completed = 0
    for seed in range(25):
        text, done = sample_constrained(*compiler, schema, seed)
        if not done:
            continue  # out of tokens: the backend ends such an answer with LENGTH
        completed += 1
        jsonschema.validate(json.loads(text), schema)
    assert completed >= 20, f"only {completed} of 25 random walks closed the JSON value"


def test_disallowed_tokens_get_minus_infinity(compiler: tuple[ConstraintCompiler, Any]) -> None:
    constraint = compiler[0].json(json.dumps(ENUM))
    logits = np.zeros(len(constraint.allowed()) + 3, dtype=np.float32)
    constraint.mask(logits)
    allowed = np.isfinite(logits)
    assert 0 < allowed.sum() < len(logits) - 3
    assert not allowed[-3:].any(), "padding columns beyond the vocabulary are never sampled"


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ('{"type": "objec"}', "objec"),
        ("[1, 2]", "must be a JSON object"),
        ("{nope", "not JSON"),
        ('{"type": "string", "pattern": "("}', "("),
    ],
)
def test_unusable_schemas_are_named(schema: str, problem: str) -> None:
    found = schema_problem(schema)
    assert found is not None
    assert problem in found


def test_usable_schemas_pass_including_keywords_left_to_the_gateway() -> None:
    for schema in SCHEMAS.values():
        assert schema_problem(json.dumps(schema)) is None
    unique = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    assert schema_problem(json.dumps(unique)) is None
