"""Prompt templates with `{variables}`, checked when an agent is defined, not when it runs.

A template may use the standard variables (`goal`, `input`, `context`, `round`,
`history_count`) and session metadata as `{metadata.KEY}`. Anything else (an unknown name,
a positional `{}`, an attribute or index lookup, a conversion such as `!r` or a format spec)
is rejected with `InvalidArgument` naming the field. Literal braces are written `{{` and `}}`.
Metadata keys are checked against the session when the agent joins it, so a template can
never fail while a session runs.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

from agentmesh_common import InvalidArgument

STANDARD_VARIABLES = frozenset({"goal", "input", "context", "round", "history_count"})
METADATA_PREFIX = "metadata."
_FORMATTER = string.Formatter()
_METADATA_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class PromptTemplate:
    """A parsed template: its literal pieces and the variables between them."""

    text: str
    parts: tuple[tuple[str, str | None], ...]

    @property
    def variables(self) -> frozenset[str]:
        """Every variable the template uses."""
        return frozenset(name for _, name in self.parts if name is not None)

    @property
    def metadata_keys(self) -> frozenset[str]:
        """Session metadata keys the template needs."""
        return frozenset(
            name.removeprefix(METADATA_PREFIX)
            for name in self.variables
            if name.startswith(METADATA_PREFIX)
        )

    def render(self, values: TemplateValues) -> str:
        """Fill the template; every variable was validated, so this cannot fail."""
        rendered: list[str] = []
        for literal, name in self.parts:
            rendered.append(literal)
            if name is not None:
                rendered.append(values.lookup(name))
        return "".join(rendered)


@dataclass(frozen=True)
class TemplateValues:
    """What a template is rendered with, at one agent turn."""

    goal: str
    input: str = ""
    context: str = ""
    round: int = 0
    history_count: int = 0
    metadata: Mapping[str, str] | None = None

    def lookup(self, name: str) -> str:
        if name.startswith(METADATA_PREFIX):
            return (self.metadata or {}).get(name.removeprefix(METADATA_PREFIX), "")
        value: object = getattr(self, name)
        return str(value)


def parse_template(text: str, field: str) -> PromptTemplate:
    """Parse and validate `text`; `field` names it in errors, e.g. agent.prompts.system."""
    try:
        pieces = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise InvalidArgument.for_field(field, f"malformed template: {exc}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in pieces:
        if name is None:
            parts.append((literal, None))
            continue
        if name == "" or name.isdigit():
            raise InvalidArgument.for_field(
                field, "positional fields such as {} are not allowed; name a variable"
            )
        if conversion or spec:
            raise InvalidArgument.for_field(
                field, f"{{{name}}} may not have a conversion or format spec"
            )
        if not _is_known(name):
            allowed = ", ".join(sorted(STANDARD_VARIABLES))
            raise InvalidArgument.for_field(
                field,
                f"unknown variable {{{name}}}; use one of {allowed} or {{metadata.KEY}}",
            )
        parts.append((literal, name))
    return PromptTemplate(text=text, parts=tuple(parts))


def check_metadata(template: PromptTemplate, metadata: Mapping[str, str], field: str) -> None:
    """Fail when the template needs session metadata keys the session does not have."""
    missing = sorted(template.metadata_keys - metadata.keys())
    if missing:
        raise InvalidArgument.for_field(
            field, f"template uses metadata {', '.join(missing)} that the session does not set"
        )


def _is_known(name: str) -> bool:
    if name in STANDARD_VARIABLES:
        return True
    key = name.removeprefix(METADATA_PREFIX)
    return name.startswith(METADATA_PREFIX) and _METADATA_KEY.fullmatch(key) is not None
