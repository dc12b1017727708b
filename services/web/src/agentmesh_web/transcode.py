"""HTTP/JSON to protobuf and back, as the `google.api.http` rules say (proto3 canonical JSON).

A request message is built from three places: the fields its path template bound, the JSON
body (the whole message for ``body: "*"``, one field for ``body: "<field>"``), and, for the
fields neither set, the query string (``?page_size=10&status=SESSION_STATUS_RUNNING``; dotted
paths reach nested fields; a repeated field repeats its parameter). Field names may be the proto
names or their lowerCamelCase JSON names. Every problem is an `InvalidArgument` naming the
field path (``session.limits.maxRounds``), never a parser's traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor, json_format, message, message_factory

from agentmesh_common import InvalidArgument

from .routes import Match

__all__ = ["build_request", "message_class", "to_json"]

_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field")
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def message_class(message_descriptor: descriptor.Descriptor) -> type[message.Message]:
    return message_factory.GetMessageClass(message_descriptor)


def to_json(reply: message.Message) -> str:
    """A message as compact proto3 canonical JSON (lowerCamelCase names, enums by name)."""
    return json.dumps(json_format.MessageToDict(reply), ensure_ascii=False, separators=(",", ":"))


def build_request(match: Match, body: bytes, query: Mapping[str, list[str]]) -> message.Message:
    """The request message of a matched route; `InvalidArgument` naming the field at fault."""
    route = match.route
    request_descriptor = route.method.input_type
    document: dict[str, Any] = {}
    if route.body == "*":
        parsed = _parse_body(body)
        if not isinstance(parsed, dict):
            raise InvalidArgument.for_field("body", "must be a JSON object")
        document = parsed
    elif route.body:
        document[route.body] = _parse_body(body)
    if route.body != "*":
        for name, values in query.items():
            _set_query(document, request_descriptor, name, values)
    for path, value in match.bindings.items():
        _set_path(document, path.split("."), value)
    try:
        return json_format.ParseDict(document, message_class(request_descriptor)())
    except json_format.ParseError as error:
        raise _invalid(str(error)) from None
    except RecursionError:
        raise InvalidArgument.for_field("body", "nested too deeply") from None


def _parse_body(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise InvalidArgument.for_field("body", "is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise InvalidArgument.for_field(
            "body", f"is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise InvalidArgument.for_field("body", "nested too deeply") from None


def _invalid(error: str) -> InvalidArgument:
    path = _FAILED_FIELD.findall(error)
    unknown = _UNKNOWN_FIELD.search(error)
    if unknown is not None:
        path.append(unknown.group(1))
        reason = "unknown field"
    else:
        reason = _FAILED_FIELD.sub("", error).split(" at ")[0].strip(" :.") or error
    return InvalidArgument.for_field(".".join(path) or "body", reason)


def _field(message_descriptor: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor:
    by_name = message_descriptor.fields_by_name.get(name)
    if by_name is not None:
        return by_name
    for candidate in message_descriptor.fields:
        if candidate.json_name == name:
            return candidate
    raise KeyError(name)


def _set_query(
    document: dict[str, Any],
    request_descriptor: descriptor.Descriptor,
    name: str,
    values: list[str],
) -> None:
    current = request_descriptor
    target = document
    parts = name.split(".")
    for index, part in enumerate(parts):
        try:
            field = _field(current, part)
        except KeyError:
            raise InvalidArgument.for_field(name, "unknown query parameter") from None
        last = index == len(parts) - 1
        if last:
            converted = [_scalar(name, field, value) for value in values]
            repeated = field.is_repeated
            if not repeated and len(converted) > 1:
                raise InvalidArgument.for_field(name, "given more than once")
            target[field.name] = converted if repeated else converted[0]
        elif field.message_type is None or field.message_type.GetOptions().map_entry:
            raise InvalidArgument.for_field(name, "unknown query parameter")
        else:
            target = target.setdefault(field.name, {})
            current = field.message_type


def _scalar(name: str, field: descriptor.FieldDescriptor, value: str) -> Any:
    if field.type == descriptor.FieldDescriptor.TYPE_BOOL:
        if value.lower() not in _BOOLEANS:
            raise InvalidArgument.for_field(name, "must be true or false")
        return _BOOLEANS[value.lower()]
    # Strings are what canonical JSON accepts for numbers, enums, timestamps and durations.
    return value


def _set_path(document: dict[str, Any], path: list[str], value: str) -> None:
    target = document
    for part in path[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidArgument.for_field(".".join(path), "conflicts with the body")
        target = child
    target[path[-1]] = value
