"""Errors of one upstream attempt, and how the gateway turns them into domain errors.

    UpstreamError            one provider attempt failed (never crosses the servicer)
      .kind: ErrorKind       what happened, decides retry / fallback / fail-fast
    agentmesh_common errors  what the caller finally sees (mapped by the shared interceptor)

Provider messages are scrubbed of anything that looks like an API key before they are
stored on an error, because some providers echo (part of) the key back.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

from agentmesh_common import (
    AgentmeshError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

from .domain import Usage

_KEY_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-*]{6,}|xai-[A-Za-z0-9_\-*]{6,}|gsk_[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{10,})"
)


class ErrorKind(enum.Enum):
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"
    OVERLOADED = "OVERLOADED"
    SERVER_ERROR = "SERVER_ERROR"
    TIMEOUT = "TIMEOUT"
    CONNECT = "CONNECT_ERROR"
    STREAM_ERROR = "STREAM_ERROR"  # an error event inside a 200 stream
    TRUNCATED = "STREAM_TRUNCATED"  # the stream ended without its terminator
    MALFORMED = "MALFORMED_RESPONSE"
    AUTH = "PROVIDER_AUTH_FAILED"
    BAD_REQUEST = "PROVIDER_REJECTED_REQUEST"
    CONTEXT_LENGTH = "CONTEXT_LENGTH_EXCEEDED"
    NOT_FOUND = "MODEL_NOT_FOUND"
    INVALID_OUTPUT = "STRUCTURED_OUTPUT_INVALID"


RETRYABLE_KINDS = frozenset(
    {
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECT,
        ErrorKind.STREAM_ERROR,
        ErrorKind.TRUNCATED,
        ErrorKind.MALFORMED,
        ErrorKind.INVALID_OUTPUT,
    }
)

# Failures that say something about the deployment's health (they trip the breaker).
HEALTH_KINDS = RETRYABLE_KINDS - {ErrorKind.RATE_LIMITED, ErrorKind.INVALID_OUTPUT} | {
    ErrorKind.AUTH
}


class UpstreamError(Exception):
    """One attempt at one deployment failed."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int = 0,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.kind = kind
        self.message = scrub(message)
        self.status = status
        self.retry_after = retry_after
        self._retryable = retryable  # the provider's own x-should-retry, when it sent one
        # Tokens the attempt used before it failed, when the provider answered (set by the
        # gateway: an answer that missed the response schema was paid for all the same).
        self.usage: Usage | None = None
        super().__init__(self.message)

    @property
    def retryable(self) -> bool:
        if self._retryable is not None:
            return self._retryable
        return self.kind in RETRYABLE_KINDS

    @property
    def grpc_code(self) -> str:
        return CODE_NAMES[self.kind]


CODE_NAMES: dict[ErrorKind, str] = {
    ErrorKind.RATE_LIMITED: "RESOURCE_EXHAUSTED",
    ErrorKind.QUOTA_EXHAUSTED: "RESOURCE_EXHAUSTED",
    ErrorKind.OVERLOADED: "UNAVAILABLE",
    ErrorKind.SERVER_ERROR: "UNAVAILABLE",
    ErrorKind.TIMEOUT: "UNAVAILABLE",
    ErrorKind.CONNECT: "UNAVAILABLE",
    ErrorKind.STREAM_ERROR: "UNAVAILABLE",
    ErrorKind.TRUNCATED: "UNAVAILABLE",
    ErrorKind.MALFORMED: "UNAVAILABLE",
    ErrorKind.AUTH: "FAILED_PRECONDITION",
    ErrorKind.BAD_REQUEST: "INVALID_ARGUMENT",
    ErrorKind.CONTEXT_LENGTH: "INVALID_ARGUMENT",
    ErrorKind.NOT_FOUND: "NOT_FOUND",
    ErrorKind.INVALID_OUTPUT: "FAILED_PRECONDITION",
}


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without anything that looks like an API key (and without ``secrets``)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return _KEY_PATTERNS.sub("[REDACTED]", text)


def to_domain_error(
    error: UpstreamError, *, provider: str, deployment: str, streamed_tokens: int = 0
) -> AgentmeshError:
    """The error a caller sees for ``error`` as the final outcome of a call."""
    metadata = {
        "provider": provider,
        "deployment": deployment,
        "upstream_status": str(error.status),
        "streamed_tokens": str(streamed_tokens),
    }
    where = f"{provider} deployment {deployment!r}"
    message = f"{where}: {error.message}"
    if streamed_tokens:
        message = f"{where} failed after {streamed_tokens} tokens were streamed: {error.message}"
    reason = error.kind.value
    kind = error.kind
    if kind in (ErrorKind.RATE_LIMITED, ErrorKind.QUOTA_EXHAUSTED):
        return ResourceExhausted(
            message, retry_after=error.retry_after, reason=reason, metadata=metadata
        )
    if kind in (ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_LENGTH):
        return InvalidArgument(message, reason=reason, metadata=metadata)
    if kind is ErrorKind.NOT_FOUND:
        return NotFound(message, reason=reason, metadata=metadata)
    if kind in (ErrorKind.AUTH, ErrorKind.INVALID_OUTPUT):
        return FailedPrecondition(message, reason=reason, metadata=metadata)
    return Unavailable(message, retry_after=error.retry_after, reason=reason, metadata=metadata)
