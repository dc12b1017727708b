"""The gateway's HTTP listener: OpenAI's and Anthropic's APIs on the same policy engine.

One aiohttp server in the gateway process, started and stopped by the composition root.
Handlers (``openai_http.py``, ``anthropic_http.py``) only convert: JSON -> :class:`GenerateCall`,
events -> each API's JSON or SSE. The call itself is :meth:`Gateway.generate`, as for gRPC.

What is shared lives here: the caller's tenant (API key -> tenant, see ``tenancy.py``), the
error bodies and HTTP statuses of both APIs (429 with ``retry-after``, so the official SDKs
raise their typed exceptions; never a traceback), the usage ledger record of every call, and
cancellation: a client that disconnects cancels its handler (aiohttp ``handler_cancellation``)
and so the upstream request.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agentmesh_common import (
    AgentmeshError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    status_code_for,
)

from .domain import (
    AttemptStarted,
    CacheMode,
    Finished,
    GatewayEvent,
    GenerateCall,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    Usage,
)
from .gateway import Gateway
from .tenancy import CallRecord, Ledger, Outcome, TenantKeys

_logger = logging.getLogger("agentmesh.gateway.http")
MAX_BODY_BYTES = 32 * 1024 * 1024
TENANT_KEY: web.AppKey[str] = web.AppKey("tenant", str)


class Api(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


@dataclass(frozen=True)
class HttpStatus:
    status: int
    openai_type: str
    anthropic_type: str


_DEFAULT_STATUS = HttpStatus(500, "server_error", "api_error")
_STATUSES: list[tuple[type[AgentmeshError], HttpStatus]] = [
    (InvalidArgument, HttpStatus(400, "invalid_request_error", "invalid_request_error")),
    (Unauthenticated, HttpStatus(401, "authentication_error", "authentication_error")),
    (PermissionDenied, HttpStatus(403, "permission_error", "permission_error")),
    (NotFound, HttpStatus(404, "not_found_error", "not_found_error")),
    (ResourceExhausted, HttpStatus(429, "rate_limit_error", "rate_limit_error")),
    (FailedPrecondition, HttpStatus(422, "invalid_request_error", "invalid_request_error")),
    (Unavailable, HttpStatus(503, "server_error", "overloaded_error")),
    (DeadlineExceeded, HttpStatus(504, "server_error", "api_error")),
    (Cancelled, HttpStatus(499, "server_error", "api_error")),
]
# The gateway's own provider key was refused: a bad gateway, not the caller's fault.
_BY_REASON = {"PROVIDER_AUTH_FAILED": HttpStatus(502, "server_error", "api_error")}


def http_status(error: AgentmeshError) -> HttpStatus:
    by_reason = _BY_REASON.get(error.reason)
    if by_reason is not None:
        return by_reason
    for cls, status in _STATUSES:
        if isinstance(error, cls):
            return status
    return _DEFAULT_STATUS


def error_body(api: Api, error: AgentmeshError, param_names: Mapping[str, str]) -> dict[str, Any]:
    """The error JSON of ``api``; ``param_names`` maps gateway fields to the API's own."""
    status = http_status(error)
    message = error.message
    param: str | None = None
    violations = getattr(error, "violations", ())
    if violations:
        first = violations[0]
        param = param_names.get(first.field, first.field)
        message = f"{param}: {first.description}"
    if api is Api.ANTHROPIC:
        return {"type": "error", "error": {"type": status.anthropic_type, "message": message}}
    return {
        "error": {
            "message": message,
            "type": status.openai_type,
            "param": param,
            "code": error.reason.lower(),
        }
    }


def retry_headers(error: AgentmeshError) -> dict[str, str]:
    wait = getattr(error, "retry_after", None)
    if wait is None:
        return {}
    return {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(round(wait * 1000))}


def error_response(
    api: Api, error: AgentmeshError, param_names: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        error_body(api, error, param_names or {}),
        status=http_status(error).status,
        headers=retry_headers(error),
    )


def presented_key(request: web.Request) -> str | None:
    """The API key: ``Authorization: Bearer <key>`` (OpenAI SDKs) or ``x-api-key`` (Anthropic)."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None


class CallRun:
    """One call through the gateway on behalf of an HTTP handler: its events, and what the
    usage ledger needs once it is over (whatever way it ends)."""

    def __init__(self, gateway: Gateway, ledger: Ledger | None, call: GenerateCall) -> None:
        self._gateway = gateway
        self._ledger = ledger
        self.call = call
        self.started_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.attempt: AttemptStarted | None = None
        self.finished: Finished | None = None
        self.streamed_tokens = 0

    async def events(self) -> AsyncGenerator[GatewayEvent, None]:
        outcome = Outcome.CANCELLED
        error: AgentmeshError | None = None
        try:
            async with aclosing(self._gateway.generate(self.call)) as events:
                async for event in events:
                    kind = type(event)
                    if kind is AttemptStarted:
                        self.attempt = event  # type: ignore[assignment]
                    elif kind is Finished:
                        self.finished = event  # type: ignore[assignment]
                        outcome = Outcome.SUCCEEDED
                    elif self.first_token_at is None and kind in _DELTAS:
                        self.first_token_at = time.perf_counter()
                    yield event
        except AgentmeshError as exc:
            outcome, error = Outcome.FAILED, exc
            raise
        finally:
            self._record(outcome, error)

    def _record(self, outcome: int, error: AgentmeshError | None) -> None:
        attempt = self.attempt
        if self._ledger is None or attempt is None:
            return  # refused before any provider was asked: nothing was used
        done = self.finished
        usage = done.usage if done is not None else Usage(estimated=True)
        first = self.first_token_at
        self._ledger.record_later(
            CallRecord(
                tenant=self.call.tenant,
                route=self.call.route,
                provider=done.provider if done is not None else attempt.provider,
                model=done.model if done is not None else attempt.model,
                attempts=attempt.attempt,
                latency_seconds=time.perf_counter() - self.started_at,
                time_to_first_token_seconds=None if first is None else first - self.started_at,
                usage=usage,
                # a caller that hung up after the answer was complete still got it
                outcome=Outcome.SUCCEEDED if done is not None else outcome,
                error_code=status_code_for(error).name if error is not None else "",
                error_message=error.message if error is not None else "",
            )
        )


_DELTAS = (TextDelta, ThinkingDelta, ToolCallDelta)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as the API's own error JSON; never a traceback."""
    api = Api.ANTHROPIC if request.path.startswith("/v1/messages") else Api.OPENAI
    if request.headers.get("anthropic-version") and request.path.startswith("/v1/models"):
        api = Api.ANTHROPIC
    try:
        return await handler(request)
    except AgentmeshError as exc:
        return error_response(api, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error: AgentmeshError = NotFound(
            f"no route {request.method} {request.path}", reason="NO_SUCH_ENDPOINT"
        )
        if exc.status == 405:
            error = InvalidArgument(f"{request.method} is not allowed on {request.path}")
        elif exc.status == 413:
            error = InvalidArgument(f"the body is larger than {MAX_BODY_BYTES} bytes")
        response = error_response(api, error)
        response.set_status(exc.status)
        return response
    except Exception:
        _logger.exception("HTTP handler failed", extra={"path": request.path})
        return error_response(api, AgentmeshError("internal error in the gateway"))


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or INVALID_ARGUMENT."""
    try:
        body = await request.json(loads=json.loads)
    except ValueError:
        raise InvalidArgument("the body is not valid JSON", reason="INVALID_JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object", reason="INVALID_JSON")
    return body


@dataclass
class HttpContext:
    """What every handler needs: the gateway, and who the caller is."""

    gateway: Gateway
    keys: TenantKeys | None  # None: no authentication, every call is ``open_tenant``
    ledger: Ledger | None
    open_tenant: str = "default"

    async def tenant(self, request: web.Request) -> str:
        if self.keys is None:
            return self.open_tenant
        return await self.keys.tenant_for(presented_key(request))

    def run(self, call: GenerateCall) -> CallRun:
        return CallRun(self.gateway, self.ledger, call)

    def routes(self) -> list[str]:
        return list(self.gateway.table.routes)


def text_parts(value: Any, field: str) -> str:
    """Message content as text: a string, or a list of text parts (other parts refused)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidArgument.for_field(
                    f"{field}[{index}]", f"only text content is supported, not {kind!r}"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument.for_field(f"{field}[{index}].text", "must be a string")
            texts.append(text)
        return "".join(texts)
    raise InvalidArgument.for_field(field, "must be a string or a list of content parts")


def opt_number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument.for_field(name, "must be a number")
    return float(value)


def opt_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument.for_field(name, "must be an integer")
    return value


def opt_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArgument.for_field(name, "must be true or false")
    return value


def json_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument.for_field(field, "must be a JSON object")
    return value


def cache_mode_from(request: web.Request, body: Mapping[str, Any]) -> CacheMode:
    """``Cache-Control: no-store`` (or LiteLLM's ``cache: {"no-store": true}``) skips the
    cache; ``no-cache`` refreshes it (the answer is fetched anew and stored)."""
    directives = {d.strip().lower() for d in request.headers.get("cache-control", "").split(",")}
    options = body.get("cache")
    if isinstance(options, dict):
        directives |= {name for name, on in options.items() if on is True}
    if "no-store" in directives:
        return CacheMode.SKIP
    if "no-cache" in directives:
        return CacheMode.REFRESH
    return CacheMode.DEFAULT
