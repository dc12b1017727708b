"""Values a request can carry that parse but cannot be used: the first one, by field path.

A fuzzer found these turning into INTERNAL or silently OK deep inside handlers: a `Value`
that is NaN or infinite (JSON cannot hold it), a `Timestamp` or `Duration` out of its
documented range (`nanos=-1`, year 10000, 10**12 seconds), and an enum number the contract does
not define (`policy=99`: proto3 keeps unknown numbers). Every service checks each request
before its handler runs (:class:`~agentmesh_common.interceptors.ErrorMappingInterceptor`),
answering INVALID_ARGUMENT with the field's path.
"""

from __future__ import annotations

import math

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import InvalidArgument

__all__ = ["check_well_formed", "first_problem"]

_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_DURATION_SECONDS = 315_576_000_000  # 10,000 years, as google/protobuf/duration.proto
_NANOS = 999_999_999


def check_well_formed(message: Message) -> None:
    """Raise INVALID_ARGUMENT naming the first unusable value in `message`, if any."""
    found = first_problem(message)
    if found is not None:
        raise InvalidArgument.for_field(*found)


def first_problem(message: Message, path: str = "") -> tuple[str, str] | None:
    """(field path, what is wrong) for the first unusable value, or None."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if not _MIN_SECONDS <= seconds <= _MAX_SECONDS or not 0 <= nanos <= _NANOS:
            return path, "is not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)"
        return None
    if name == "google.protobuf.Duration":
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if abs(seconds) > _MAX_DURATION_SECONDS or abs(nanos) > _NANOS or seconds * nanos < 0:
            return path, "is not a valid duration (at most 10000 years; nanos of the same sign)"
        return None
    if name == "google.protobuf.Value" and message.WhichOneof("kind") == "number_value":
        if not math.isfinite(message.number_value):  # type: ignore[attr-defined]
            return path, "must be a finite number (JSON has no NaN or Infinity)"
        return None
    if name == "google.protobuf.Struct":  # a JSON object: its keys are the path
        for key, item in message.fields.items():  # type: ignore[attr-defined]
            found = first_problem(item, _keyed(path, key))
            if found is not None:
                return found
        return None
    if name == "google.protobuf.ListValue":
        for i, item in enumerate(message.values):  # type: ignore[attr-defined]
            found = first_problem(item, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    for field, value in message.ListFields():
        where = f"{path}.{field.name}" if path else field.name
        found = _field_problem(field, value, where)
        if found is not None:
            return found
    return None


def _field_problem(field: FieldDescriptor, value: object, where: str) -> tuple[str, str] | None:
    if field.enum_type is not None:
        numbers = list(value) if field.is_repeated else [value]  # type: ignore[call-overload]
        for i, number in enumerate(numbers):
            if field.enum_type.values_by_number.get(number) is None:
                at = f"{where}[{i}]" if field.is_repeated else where
                return at, f"{number} is not a value of {field.enum_type.full_name}"
        return None
    if field.message_type is None:
        return None
    if field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        if value_field.message_type is None:
            return None
        for key, item in value.items():  # type: ignore[attr-defined]
            found = first_problem(item, _keyed(where, key))
            if found is not None:
                return found
        return None
    if field.is_repeated:
        for i, item in enumerate(value):  # type: ignore[arg-type]
            found = first_problem(item, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return first_problem(value, where)  # type: ignore[arg-type]


def _keyed(path: str, key: object) -> str:
    """`path.key` for a key that reads as a name, else `path['key']`."""
    return f"{path}.{key}" if isinstance(key, str) and key.isidentifier() else f"{path}[{key!r}]"
