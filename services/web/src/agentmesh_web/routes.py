"""The HTTP routes of a gRPC service, read from its `google.api.http` annotations.

Each RPC's `HttpRule` (AIP-127) gives a verb and a path template such as
``/v1/{session=sessions/*}:run``: literal segments, variables bound to a (dotted) request field
that match a pattern of literals, ``*`` (one segment) and ``**`` (the rest), and an optional
custom verb after a colon. :func:`routes_of` compiles every rule (and its additional bindings)
into a :class:`Route` with a regular expression; :class:`Router` finds the route of a request,
telling "no such path" (404) from "path known, method not" (405).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2

__all__ = ["Match", "Route", "Router", "TemplateError", "compile_template", "routes_of"]

_VERBS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([a-zA-Z_][\w.]*)(?:=([^}]*))?\}")


class TemplateError(ValueError):
    """A path template outside the grammar of google/api/http.proto."""


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    method: descriptor.MethodDescriptor
    http_method: str
    template: str
    pattern: re.Pattern[str]
    variables: tuple[str, ...]  # request field paths, in the order of the groups
    body: str  # "", "*" or a top-level field name

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)


@dataclass(frozen=True)
class Match:
    """A route and the request fields its path bound (percent-decoded)."""

    route: Route
    bindings: dict[str, str]


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A template's regular expression (matched against the raw path) and its variables."""
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a path template starts with '/'")
    path, verb = _split_verb(template)
    has_verb = verb is not None
    variables: list[str] = []
    parts: list[str] = []
    position = 0
    for found in _VARIABLE.finditer(path):
        parts.append(_literal(path[position : found.start()]))
        field, pattern = found.group(1), found.group(2) or "*"
        variables.append(field)
        parts.append(f"({_pattern(pattern, has_verb)})")
        position = found.end()
    parts.append(_literal(path[position:]))
    if "{" in path[position:] or "}" in path[position:]:
        raise TemplateError(f"{template!r}: unbalanced braces")
    suffix = f":{re.escape(verb)}" if verb is not None else ""
    return re.compile("^" + "".join(parts) + suffix + "$"), tuple(variables)


def _split_verb(template: str) -> tuple[str, str | None]:
    last_slash = template.rfind("/")
    last_brace = template.rfind("}")
    colon = template.rfind(":")
    if colon > max(last_slash, last_brace):
        return template[:colon], template[colon + 1 :]
    return template, None


def _literal(text: str) -> str:
    return re.escape(text)


def _pattern(pattern: str, has_verb: bool) -> str:
    # A segment never holds '/', nor ':' when a custom verb follows the variable.
    segment = "[^/:]+" if has_verb else "[^/]+"
    pieces = []
    for part in pattern.split("/"):
        if part == "*":
            pieces.append(segment)
        elif part == "**":
            pieces.append(".+")
        elif part and re.fullmatch(r"[\w.~-]+", part):
            pieces.append(re.escape(part))
        else:
            raise TemplateError(f"{pattern!r}: unsupported pattern segment {part!r}")
    return "/".join(pieces)


def routes_of(service: descriptor.ServiceDescriptor) -> list[Route]:
    """Every HTTP binding of the service's annotated RPCs (unannotated RPCs have none)."""
    routes: list[Route] = []
    for method in service.methods:
        rule = _http_rule(method)
        if rule is not None:
            routes.extend(_route(method, binding) for binding in (rule, *rule.additional_bindings))
    return routes


def _http_rule(method: descriptor.MethodDescriptor) -> http_pb2.HttpRule | None:
    options = descriptor_pb2.MethodOptions()
    options.ParseFromString(method.GetOptions().SerializeToString())
    extension: Any = annotations_pb2.http  # its stub says FieldDescriptor, not an extension
    if not options.HasExtension(extension):
        return None
    return cast(http_pb2.HttpRule, options.Extensions[extension])


def _route(method: descriptor.MethodDescriptor, rule: http_pb2.HttpRule) -> Route:
    kind = rule.WhichOneof("pattern")
    if kind not in _VERBS:
        raise TemplateError(f"{method.full_name}: unsupported HTTP rule {kind!r}")
    template = str(getattr(rule, kind))
    pattern, variables = compile_template(template)
    if rule.body not in ("", "*") and rule.body not in method.input_type.fields_by_name:
        raise TemplateError(f"{method.full_name}: body field {rule.body!r} does not exist")
    return Route(method, kind.upper(), template, pattern, variables, rule.body)


class Router:
    """Finds the route of a request: custom-verb templates first, then the others."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: Sequence[Route] = sorted(
            routes, key=lambda route: _split_verb(route.template)[1] is None
        )

    @property
    def routes(self) -> Sequence[Route]:
        return self._routes

    def match(self, http_method: str, raw_path: str) -> Match | None:
        """The route for this method and path, or None (see :meth:`allowed`)."""
        for route in self._routes:
            if route.http_method != http_method:
                continue
            found = route.pattern.match(raw_path)
            if found is not None:
                bindings = {
                    field: urllib.parse.unquote(value)
                    for field, value in zip(route.variables, found.groups(), strict=True)
                }
                return Match(route, bindings)
        return None

    def allowed(self, raw_path: str) -> list[str]:
        """The HTTP methods some route accepts for this path (empty: the path is unknown)."""
        return sorted({r.http_method for r in self._routes if r.pattern.match(raw_path)})
