"""Resource names, ids, page sizes and page tokens: parsing and validation.

Every parser raises :class:`~agentmesh_common.InvalidArgument` with a field violation naming
the request field, so a malformed name never reaches the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from agentmesh_common import FieldViolation, InvalidArgument
from agentmesh_common.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, page_size

__all__ = [
    "ANY_USER",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MemoryName",
    "PageToken",
    "check_request_id",
    "invalid",
    "new_id",
    "page_size",
    "parse_agent_id",
    "parse_agent_name",
    "parse_api_key_name",
    "parse_collection_name",
    "parse_document_name",
    "parse_memory_name",
    "parse_memory_parent",
    "parse_session_name",
    "parse_settings_name",
    "parse_task_name",
]


ID_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
# Session, message, task and execution ids may also be uuids/hex and use underscores.
LOOSE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
KEY_PATTERN = re.compile(r"[A-Za-z0-9._:~-]{1,256}")
REQUEST_ID_MAX = 128


def invalid(field: str, description: str) -> InvalidArgument:
    """An INVALID_ARGUMENT error with one field violation."""
    return InvalidArgument.for_field(field, description)


def invalid_many(violations: Sequence[FieldViolation]) -> InvalidArgument:
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidArgument(f"{first.field}: {first.description}{more}", violations=violations)


def new_id() -> str:
    """A fresh opaque id (32 hex digits)."""
    return uuid.uuid4().hex


def _segment(value: str, pattern: re.Pattern[str], field: str, what: str) -> str:
    if not value:
        raise invalid(field, f"{what} must not be empty")
    if pattern.fullmatch(value) is None:
        raise invalid(field, f"{what} {value[:80]!r} must match {pattern.pattern}")
    return value


def parse_agent_id(value: str, field: str = "agent_id") -> str:
    return _segment(value, ID_PATTERN, field, "agent id")


def parse_loose_id(value: str, field: str, what: str) -> str:
    return _segment(value, LOOSE_ID_PATTERN, field, what)


def _parts(value: str, field: str, shape: str, size: int) -> list[str]:
    if not value:
        raise invalid(field, f"must not be empty; expected {shape!r}")
    parts = value.split("/")
    if len(parts) != size:
        raise invalid(field, f"{value[:120]!r} is not of the form {shape!r}")
    return parts


def parse_agent_name(value: str, field: str = "name") -> str:
    """``agents/{agent_id}`` -> agent_id."""
    parts = _parts(value, field, "agents/{agent_id}", 2)
    if parts[0] != "agents":
        raise invalid(field, f"{value[:120]!r} is not of the form 'agents/{{agent_id}}'")
    return parse_agent_id(parts[1], field)


def parse_session_name(value: str, field: str = "name") -> str:
    """``sessions/{session_id}`` -> session_id."""
    parts = _parts(value, field, "sessions/{session_id}", 2)
    if parts[0] != "sessions":
        raise invalid(field, f"{value[:120]!r} is not of the form 'sessions/{{session_id}}'")
    return parse_loose_id(parts[1], field, "session id")


def parse_task_name(value: str, field: str = "task.name") -> tuple[str, str]:
    """``sessions/{session_id}/tasks/{task_id}`` -> (session_id, task_id)."""
    shape = "sessions/{session_id}/tasks/{task_id}"
    parts = _parts(value, field, shape, 4)
    if parts[0] != "sessions" or parts[2] != "tasks":
        raise invalid(field, f"{value[:120]!r} is not of the form {shape!r}")
    return parse_loose_id(parts[1], field, "session id"), parse_loose_id(parts[3], field, "task id")


def parse_user_id(value: str, field: str) -> str:
    return _segment(value, USER_PATTERN, field, "user id")


@dataclass(frozen=True)
class MemoryName:
    """The parts of ``agents/{agent_id}/users/{user_id}/memories/{key}``."""

    agent_id: str
    user_id: str
    key: str

    def render(self) -> str:
        return f"agents/{self.agent_id}/users/{self.user_id}/memories/{self.key}"


#: The AIP-159 wildcard: ``agents/{agent_id}/users/-`` is every user of the agent.
ANY_USER = "-"


def parse_memory_parent(value: str, field: str = "parent") -> tuple[str, str | None]:
    """``agents/{agent_id}/users/{user_id}`` -> (agent_id, user_id); a user id of ``-``
    (AIP-159) -> (agent_id, None): every user of the agent. No user id can be ``-``, since
    user ids start with a letter or digit."""
    shape = "agents/{agent_id}/users/{user_id}"
    parts = _parts(value, field, shape, 4)
    if parts[0] != "agents" or parts[2] != "users":
        raise invalid(field, f"{value[:120]!r} is not of the form {shape!r}")
    agent_id = parse_agent_id(parts[1], field)
    if parts[3] == ANY_USER:
        return agent_id, None
    return agent_id, parse_user_id(parts[3], field)


def parse_memory_name(value: str, field: str = "name") -> MemoryName:
    shape = "agents/{agent_id}/users/{user_id}/memories/{key}"
    parts = _parts(value, field, shape, 6)
    if parts[0] != "agents" or parts[2] != "users" or parts[4] != "memories":
        raise invalid(field, f"{value[:120]!r} is not of the form {shape!r}")
    return MemoryName(
        parse_agent_id(parts[1], field),
        parse_user_id(parts[3], field),
        _segment(parts[5], KEY_PATTERN, field, "memory key"),
    )


def parse_settings_name(value: str, field: str = "name") -> str:
    """``users/{user_id}/settings`` -> user_id."""
    shape = "users/{user_id}/settings"
    parts = _parts(value, field, shape, 3)
    if parts[0] != "users" or parts[2] != "settings":
        raise invalid(field, f"{value[:120]!r} is not of the form {shape!r}")
    return parse_user_id(parts[1], field)


def parse_api_key_name(value: str, field: str = "name") -> str:
    parts = _parts(value, field, "apiKeys/{key_id}", 2)
    if parts[0] != "apiKeys":
        raise invalid(field, f"{value[:120]!r} is not of the form 'apiKeys/{{key_id}}'")
    return parse_loose_id(parts[1], field, "key id")


#: The AIP-159 wildcard for every collection: ``collections/-``.
ANY_COLLECTION = "-"


def parse_collection_name(value: str, field: str = "name", *, allow_any: bool = False) -> str:
    """``collections/{collection_id}`` -> collection_id (``-`` when `allow_any`)."""
    parts = _parts(value, field, "collections/{collection_id}", 2)
    if parts[0] != "collections":
        raise invalid(field, f"{value[:120]!r} is not of the form 'collections/{{collection_id}}'")
    if allow_any and parts[1] == ANY_COLLECTION:
        return ANY_COLLECTION
    return _segment(parts[1], ID_PATTERN, field, "collection id")


def parse_document_name(value: str, field: str = "name") -> tuple[str, str]:
    """``collections/{collection_id}/documents/{document_id}`` -> (collection_id, document_id)."""
    shape = "collections/{collection_id}/documents/{document_id}"
    parts = _parts(value, field, shape, 4)
    if parts[0] != "collections" or parts[2] != "documents":
        raise invalid(field, f"{value[:120]!r} is not of the form {shape!r}")
    return (
        _segment(parts[1], ID_PATTERN, field, "collection id"),
        parse_loose_id(parts[3], field, "document id"),
    )


def check_request_id(value: str, field: str = "request_id") -> str:
    if len(value) > REQUEST_ID_MAX:
        raise invalid(field, f"must be at most {REQUEST_ID_MAX} characters")
    return value


@dataclass(frozen=True)
class PageToken:
    """An opaque keyset token: the last key returned, bound to the query's filters."""

    after: str | int

    @staticmethod
    def _fingerprint(query: Sequence[object]) -> str:
        return hashlib.sha256(repr(tuple(query)).encode()).hexdigest()[:16]

    def encode(self, query: Sequence[object]) -> str:
        raw = json.dumps({"a": self.after, "q": self._fingerprint(query)}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(
        cls, token: str, query: Sequence[object], field: str = "page_token"
    ) -> PageToken | None:
        """None for an empty token; INVALID_ARGUMENT for a malformed or foreign one."""
        if not token:
            return None
        try:
            padded = token + "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            after = data["a"]
            fingerprint = data["q"]
        except (ValueError, binascii.Error, KeyError, TypeError):
            raise invalid(field, "is not a token returned by this list") from None
        if not isinstance(after, str | int) or isinstance(after, bool):
            raise invalid(field, "is not a token returned by this list")
        if fingerprint != cls._fingerprint(query):
            raise invalid(field, "was returned for a list with other filters")
        return cls(after)
