"""Workflow rules: a small, safe expression language over a token, parsed once, evaluated
without `eval`.

    rule     := or
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | compare
    compare  := value (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not in") value)?
    value    := path | STRING | NUMBER | "true" | "false" | "null" | list | "exists(" path ")"
              | "(" rule ")"
    list     := "[" (value ("," value)*)? "]"
    path     := NAME ("." NAME)*        (the first name one of the roots the caller allows)

Examples: `exists(data.content)`, `metadata.status == "unclassified"`,
`data.score >= 0.8 and metadata.type in ["pdf", "doc"]`, `not exists(data.review)`.

Evaluation never raises: a path that is missing is `null` (so `exists` is false and every
comparison but `!=` is false); `<`, `<=`, `>`, `>=` compare two numbers or two strings and are
false otherwise; `==` never equates a boolean with a number. A bare value as a whole rule is
true when it is present and not `false`, `null`, `0`, `""`, `[]` or `{}`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

Json: TypeAlias = bool | int | float | str | list["Json"] | dict[str, "Json"] | None

MAX_RULE_LENGTH = 4096
MAX_DEPTH = 32

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|\.)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null", "exists"})


class RuleError(ValueError):
    """A rule that does not parse; `column` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (at column {column})")
        self.column = column


@dataclass(frozen=True)
class Path:
    parts: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.parts)


def lookup(scope: Mapping[str, Json], parts: Sequence[str]) -> tuple[bool, Json]:
    """(found, value) of a dotted path in nested mappings; list items by index."""
    current: Json = dict(scope)
    for part in parts:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


Node = Callable[[Mapping[str, Json]], Json]


@dataclass(frozen=True)
class Rule:
    """A parsed rule: `text` as written, `paths` it reads, `matches(scope)` to evaluate."""

    text: str
    paths: tuple[Path, ...]
    _node: Node

    def matches(self, scope: Mapping[str, Json]) -> bool:
        return _truthy(self._node(scope))


def parse(text: str, roots: Collection[str]) -> Rule:
    """Parse `text`; paths must start with one of `roots`. RuleError says what and where."""
    if len(text) > MAX_RULE_LENGTH:
        raise RuleError(f"is longer than {MAX_RULE_LENGTH} characters", MAX_RULE_LENGTH)
    parser = _Parser(text, frozenset(roots))
    node = parser.rule(0)
    parser.expect_end()
    return Rule(text=text, paths=tuple(parser.paths), _node=node)


def all_match(rules: Sequence[Rule], scope: Mapping[str, Json]) -> bool:
    """True when every rule matches (a list of rules is their conjunction)."""
    return all(rule.matches(scope) for rule in rules)


class _Parser:
    def __init__(self, text: str, roots: frozenset[str]) -> None:
        self.text = text
        self.roots = roots
        self.tokens = _tokenize(text)
        self.at = 0
        self.paths: list[Path] = []

    # -- token stream ---------------------------------------------------------------------

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.at]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def accept(self, kind: str, value: str) -> bool:
        token_kind, token_value, _ = self.peek()
        if token_kind == kind and token_value == value:
            self.at += 1
            return True
        return False

    def expect(self, kind: str, value: str) -> None:
        if not self.accept(kind, value):
            self.fail(f"expected {value!r}")

    def expect_end(self) -> None:
        if self.peek()[0] != "end":
            self.fail("unexpected text after the rule")

    def fail(self, message: str) -> None:
        kind, value, column = self.peek()
        found = "the end of the rule" if kind == "end" else repr(value)
        raise RuleError(f"{message}, found {found}", column)

    # -- grammar --------------------------------------------------------------------------

    def rule(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            self.fail(f"nests deeper than {MAX_DEPTH} levels")
        left = self.conjunction(depth)
        while self.accept("name", "or"):
            left = _either(left, self.conjunction(depth))
        return left

    def conjunction(self, depth: int) -> Node:
        left = self.negation(depth)
        while self.accept("name", "and"):
            left = _both(left, self.negation(depth))
        return left

    def negation(self, depth: int) -> Node:
        if self.accept("name", "not"):
            if depth > MAX_DEPTH:
                self.fail(f"nests deeper than {MAX_DEPTH} levels")
            inner = self.negation(depth + 1)
            return lambda scope: not _truthy(inner(scope))
        return self.comparison(depth)

    def comparison(self, depth: int) -> Node:
        left = self.value(depth)
        kind, value, _ = self.peek()
        if kind == "op" and value in _COMPARISONS:
            self.take()
            return _compare(_COMPARISONS[value], left, self.value(depth))
        if kind == "name" and value == "in":
            self.take()
            return _membership(left, self.value(depth), negate=False)
        if kind == "name" and value == "not" and self.tokens[self.at + 1][1] == "in":
            self.at += 2
            return _membership(left, self.value(depth), negate=True)
        return left

    def value(self, depth: int) -> Node:
        kind, value, column = self.take()
        if kind == "number":
            number: Json = float(value) if any(c in value for c in ".eE") else int(value)
            if isinstance(number, float) and not math.isfinite(number):
                raise RuleError("number out of range", column)
            return lambda _scope: number
        if kind == "string":
            text = _unquote(value)
            return lambda _scope: text
        if kind == "op" and value == "(":
            inner = self.rule(depth + 1)
            self.expect("op", ")")
            return inner
        if kind == "op" and value == "[":
            return self.list_value(depth)
        if kind == "name":
            return self.named(value, column)
        self.at -= 1
        self.fail("expected a value, a path or '('")
        raise AssertionError("unreachable")

    def list_value(self, depth: int) -> Node:
        items: list[Node] = []
        if not self.accept("op", "]"):
            items.append(self.value(depth + 1))
            while self.accept("op", ","):
                items.append(self.value(depth + 1))
            self.expect("op", "]")
        return lambda scope: [item(scope) for item in items]

    def named(self, name: str, column: int) -> Node:
        constants: dict[str, Json] = {"true": True, "false": False, "null": None}
        if name in constants:
            constant = constants[name]
            return lambda _scope: constant
        if name == "exists":
            self.expect("op", "(")
            _, first, first_column = self.take()
            path = self.path(first, first_column)
            self.expect("op", ")")
            return lambda scope: lookup(scope, path.parts)[0]
        path = self.path(name, column)
        return lambda scope: lookup(scope, path.parts)[1]

    def path(self, first: str, column: int) -> Path:
        if first in _KEYWORDS or not first or not (first[0].isalpha() or first[0] == "_"):
            raise RuleError(f"expected a path, found {first!r}", column)
        if first not in self.roots:
            roots = ", ".join(sorted(self.roots))
            raise RuleError(f"unknown name {first!r}: a path starts with one of {roots}", column)
        parts = [first]
        while self.accept("op", "."):
            kind, value, part_column = self.take()
            if kind not in ("name", "number") or not re.fullmatch(r"\w+", value):
                raise RuleError("expected a field name after '.'", part_column)
            parts.append(value)
        path = Path(tuple(parts))
        self.paths.append(path)
        return path


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            tokens.append(("end", "", position + 1))
            return tokens
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise RuleError(f"unexpected character {text[position]!r}", position + 1)
        kind = match.lastgroup
        tokens.append((kind, match.group(kind), match.start(kind) + 1))
        position = match.end()


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _truthy(value: Json) -> bool:
    return value not in (None, False, 0, "", [], {})


def _number(value: Json) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(left: Json, right: Json) -> bool:
    if isinstance(left, bool) != isinstance(right, bool):
        return False
    return left == right


def _ordered(test: Callable[[float | str, float | str], bool]) -> Callable[[Json, Json], bool]:
    def compare(left: Json, right: Json) -> bool:
        if _number(left) and _number(right):
            return test(left, right)  # type: ignore[arg-type]
        if isinstance(left, str) and isinstance(right, str):
            return test(left, right)
        return False

    return compare


_COMPARISONS: dict[str, Callable[[Json, Json], bool]] = {
    "==": _equal,
    "!=": lambda left, right: not _equal(left, right),
    "<": _ordered(lambda a, b: a < b),  # type: ignore[operator]
    "<=": _ordered(lambda a, b: a <= b),  # type: ignore[operator]
    ">": _ordered(lambda a, b: a > b),  # type: ignore[operator]
    ">=": _ordered(lambda a, b: a >= b),  # type: ignore[operator]
}


def _compare(test: Callable[[Json, Json], bool], left: Node, right: Node) -> Node:
    return lambda scope: test(left(scope), right(scope))


def _membership(item: Node, container: Node, *, negate: bool) -> Node:
    def contains(scope: Mapping[str, Json]) -> bool:
        needle, haystack = item(scope), container(scope)
        if isinstance(haystack, list):
            found = any(_equal(needle, candidate) for candidate in haystack)
        elif isinstance(haystack, (str, dict)) and isinstance(needle, str):
            found = needle in haystack
        else:
            return False
        return found != negate

    return contains


def _either(left: Node, right: Node) -> Node:
    return lambda scope: _truthy(left(scope)) or _truthy(right(scope))


def _both(left: Node, right: Node) -> Node:
    return lambda scope: _truthy(left(scope)) and _truthy(right(scope))
