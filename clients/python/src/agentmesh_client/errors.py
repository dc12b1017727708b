"""Typed agentmesh errors, shared by the client and the services.

A failed call raises one of these (`agentmesh_client.status.from_rpc_error` rebuilds it from
the `google.rpc.Status` the service sent). The hierarchy is grpc-free, so that service code
below a servicer can raise it without importing ``grpc``; the services' `agentmesh_common.errors`
re-exports these very classes, so `except agentmesh_common.NotFound` and
`except agentmesh_client.errors.NotFound` catch the same thing.

    AgentmeshError                 .reason (ErrorInfo.reason), .metadata, .domain, .message
    ├── InvalidArgument            .violations: FieldViolation(field, description), ...
    │   └── RequestIdReused        REQUEST_ID_REUSED
    ├── NotFound
    │   ├── SessionNotFound        SESSION_NOT_FOUND
    │   ├── AgentNotFound          AGENT_NOT_FOUND
    │   └── RouteNotFound          ROUTE_NOT_FOUND
    ├── AlreadyExists
    │   ├── AgentExists            AGENT_EXISTS
    │   └── SessionExists          SESSION_EXISTS
    ├── FailedPrecondition
    │   ├── SessionBusy            SESSION_BUSY
    │   ├── SessionEnded           SESSION_ENDED
    │   └── ApprovalResolved       APPROVAL_RESOLVED
    ├── Aborted
    ├── OutOfRange
    ├── ResourceExhausted          .retry_after seconds (google.rpc.RetryInfo) or None
    │   ├── RateLimited            TENANT_RATE_LIMITED
    │   └── TokensExhausted        TENANT_TOKENS_EXHAUSTED
    ├── Unauthenticated
    │   ├── ApiKeyMissing          API_KEY_MISSING
    │   ├── ApiKeyInvalid          API_KEY_INVALID
    │   └── StreamTokenExpired     STREAM_TOKEN_EXPIRED
    ├── PermissionDenied
    ├── Unavailable                .retry_after seconds or None
    ├── DeadlineExceeded
    ├── Cancelled
    ├── Unimplemented
    └── Internal

One class per status code; under them, a class for each common reason (`REASON_TYPES`), so a
caller can catch as narrowly as it likes:

    try:
        await mesh.get_session(name)
    except SessionNotFound:              # only this reason
        ...
    except NotFound as err:              # any other NOT_FOUND; err.reason says which
        ...

A reason without a class of its own (docs/api.md lists them all) arrives as its status code's
class with `err.reason` set. Services subclass these for their own cases (``class
SessionNotFound(NotFound)``) and set ``default_reason``; the status code follows the nearest
ancestor in `agentmesh_client.status.STATUS_CODES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "REASON_TYPES",
    "Aborted",
    "AgentExists",
    "AgentNotFound",
    "AgentmeshError",
    "AlreadyExists",
    "ApiKeyInvalid",
    "ApiKeyMissing",
    "ApprovalResolved",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "RateLimited",
    "RequestIdReused",
    "ResourceExhausted",
    "RouteNotFound",
    "SessionBusy",
    "SessionEnded",
    "SessionExists",
    "SessionNotFound",
    "StreamTokenExpired",
    "TokensExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: ``field`` is a dotted path such as ``agent.name``."""

    field: str
    description: str


class AgentmeshError(Exception):
    """Base of every domain error.

    ``reason`` is an UPPER_SNAKE machine-readable cause (``google.rpc.ErrorInfo.reason``);
    ``metadata`` carries small string facts about it (``ErrorInfo.metadata``).
    """

    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: Mapping[str, str] = dict(metadata or {})
        # Set when the error was rebuilt from a remote status: the ErrorInfo domain.
        self.domain: str | None = None

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(AgentmeshError):
    """The request is malformed; ``violations`` name the offending fields."""

    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgument:
        """One bad field: the message and the single violation both name it."""
        return cls(f"{field}: {description}", violations=[FieldViolation(field, description)])


class NotFound(AgentmeshError):
    default_reason = "NOT_FOUND"


class AlreadyExists(AgentmeshError):
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(AgentmeshError):
    default_reason = "FAILED_PRECONDITION"


class Aborted(AgentmeshError):
    default_reason = "ABORTED"


class OutOfRange(AgentmeshError):
    default_reason = "OUT_OF_RANGE"


class _Retryable(AgentmeshError):
    """An error after which the caller may retry, no sooner than ``retry_after`` seconds."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        self.retry_after = retry_after


class ResourceExhausted(_Retryable):
    default_reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(AgentmeshError):
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(AgentmeshError):
    default_reason = "PERMISSION_DENIED"


class Unavailable(_Retryable):
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(AgentmeshError):
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(AgentmeshError):
    default_reason = "CANCELLED"


class Unimplemented(AgentmeshError):
    default_reason = "UNIMPLEMENTED"


class Internal(AgentmeshError):
    default_reason = "INTERNAL"


# -- one class per common reason ---------------------------------------------------------------


class RequestIdReused(InvalidArgument):
    """A `request_id` was sent again with a different request."""

    default_reason = "REQUEST_ID_REUSED"


class SessionNotFound(NotFound):
    default_reason = "SESSION_NOT_FOUND"


class AgentNotFound(NotFound):
    default_reason = "AGENT_NOT_FOUND"


class RouteNotFound(NotFound):
    """The gateway has no route of that name."""

    default_reason = "ROUTE_NOT_FOUND"


class AgentExists(AlreadyExists):
    default_reason = "AGENT_EXISTS"


class SessionExists(AlreadyExists):
    default_reason = "SESSION_EXISTS"


class SessionBusy(FailedPrecondition):
    """The session is running a turn and the message's policy was REJECT."""

    default_reason = "SESSION_BUSY"


class SessionEnded(FailedPrecondition):
    """The session already ended (completed, failed or cancelled)."""

    default_reason = "SESSION_ENDED"


class ApprovalResolved(FailedPrecondition):
    """The tool call was already approved or rejected."""

    default_reason = "APPROVAL_RESOLVED"


class RateLimited(ResourceExhausted):
    """The tenant's requests-per-minute budget is spent; retry after `retry_after` seconds."""

    default_reason = "TENANT_RATE_LIMITED"


class TokensExhausted(ResourceExhausted):
    """The tenant's tokens-per-minute budget is spent; retry after `retry_after` seconds."""

    default_reason = "TENANT_TOKENS_EXHAUSTED"


class ApiKeyMissing(Unauthenticated):
    default_reason = "API_KEY_MISSING"


class ApiKeyInvalid(Unauthenticated):
    default_reason = "API_KEY_INVALID"


class StreamTokenExpired(Unauthenticated):
    default_reason = "STREAM_TOKEN_EXPIRED"


#: The class a remote error of each of these reasons is raised as (when its status code is that
#: of the class's ancestor; otherwise the code's own class).
REASON_TYPES: Mapping[str, type[AgentmeshError]] = {
    cls.default_reason: cls
    for cls in (
        RequestIdReused,
        SessionNotFound,
        AgentNotFound,
        RouteNotFound,
        AgentExists,
        SessionExists,
        SessionBusy,
        SessionEnded,
        ApprovalResolved,
        RateLimited,
        TokensExhausted,
        ApiKeyMissing,
        ApiKeyInvalid,
        StreamTokenExpired,
    )
}
