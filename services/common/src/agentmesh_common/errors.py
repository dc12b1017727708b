"""Domain errors shared by every agentmesh service.

The hierarchy is grpc-free so that code below a servicer can raise it without importing
``grpc``; :mod:`agentmesh_common.status` holds the one table mapping it to status codes.

    AgentmeshError
    ├── InvalidArgument      (carries FieldViolation list -> google.rpc.BadRequest)
    ├── NotFound
    ├── AlreadyExists
    ├── FailedPrecondition
    ├── Aborted
    ├── OutOfRange
    ├── ResourceExhausted    (optional retry_after seconds -> google.rpc.RetryInfo)
    ├── Unauthenticated
    ├── PermissionDenied
    ├── Unavailable          (optional retry_after seconds -> google.rpc.RetryInfo)
    ├── DeadlineExceeded
    ├── Cancelled
    ├── Unimplemented
    └── Internal

Services subclass these for their own cases (``class SessionNotFound(NotFound)``) and set
``default_reason``; the status code follows the nearest ancestor in the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "Aborted",
    "AgentmeshError",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
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
