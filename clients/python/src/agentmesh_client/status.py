"""The one table between the errors of :mod:`agentmesh_client.errors` and gRPC status codes, in
both directions.

Servers call :func:`to_rpc_status` (or `agentmesh_common.status.to_grpc_status`) to build a
rich ``google.rpc.Status`` with ``ErrorInfo``, ``BadRequest`` and ``RetryInfo`` details; clients
call :func:`from_rpc_error` to turn a failed call back into the typed exception: the class of
its reason when there is one (`errors.REASON_TYPES`), else the class of its status code.
Needs only grpcio, protobuf and googleapis-common-protos.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import (
    error_details_pb2,
    status_pb2,
)

from . import errors

__all__ = [
    "STATUS_CODES",
    "STATUS_DETAILS_KEY",
    "from_rpc_error",
    "from_status",
    "rpc_status_of",
    "status_code_for",
    "to_rpc_status",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"

STATUS_CODES: Mapping[type[errors.AgentmeshError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.AgentmeshError: grpc.StatusCode.INTERNAL,
}

_ERROR_TYPES: Mapping[grpc.StatusCode, type[errors.AgentmeshError]] = {
    code: cls for cls, code in STATUS_CODES.items() if cls is not errors.AgentmeshError
}


def status_code_for(exc: errors.AgentmeshError) -> grpc.StatusCode:
    """The status code of ``exc``: that of its nearest ancestor in :data:`STATUS_CODES`."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL  # unreachable: AgentmeshError is in the table


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_rpc_status(exc: errors.AgentmeshError, domain: str) -> status_pb2.Status:
    """Build ``google.rpc.Status`` with ErrorInfo, plus BadRequest / RetryInfo when relevant."""
    code = status_code_for(exc)
    status = status_pb2.Status(code=code.value[0], message=exc.message)
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=domain)
    info.metadata.update(exc.metadata)
    status.details.append(_pack(info))
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
        status.details.append(_pack(bad_request))
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, errors.ResourceExhausted | errors.Unavailable) and retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(retry_after * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def from_status(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None
) -> errors.AgentmeshError:
    """Rebuild the typed exception from a code, its message and the optional rich status."""
    by_code = _ERROR_TYPES.get(code, errors.Internal)
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[errors.FieldViolation] = []
    retry_after: float | None = None
    for detail in status.details if status is not None else ():
        # Unpack answers whether the Any holds that type, so each detail is tried in turn.
        error_info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        retry_info = error_details_pb2.RetryInfo()
        if detail.Unpack(error_info):
            info = error_info
        elif detail.Unpack(bad_request):
            violations.extend(
                errors.FieldViolation(field=v.field, description=v.description)
                for v in bad_request.field_violations
            )
        elif detail.Unpack(retry_info):
            retry_after = retry_info.retry_delay.ToNanoseconds() / 1e9
    reason = info.reason if info is not None and info.reason else code.name
    by_reason = errors.REASON_TYPES.get(reason)
    cls = by_reason if by_reason is not None and issubclass(by_reason, by_code) else by_code
    metadata = dict(info.metadata) if info is not None else None
    exc: errors.AgentmeshError
    if issubclass(cls, errors.InvalidArgument):
        exc = cls(message, violations=violations, reason=reason, metadata=metadata)
    elif issubclass(cls, errors.ResourceExhausted | errors.Unavailable):
        exc = cls(message, retry_after=retry_after, reason=reason, metadata=metadata)
    else:
        exc = cls(message, reason=reason, metadata=metadata)
    exc.domain = info.domain if info is not None else None
    return exc


class _FailedCall(Protocol):
    """What both ``grpc.aio.AioRpcError`` and a failed sync ``grpc.Call`` offer."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Iterable[tuple[str, str | bytes]] | None: ...


def _status_details(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> status_pb2.Status | None:
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def rpc_status_of(err: grpc.RpcError) -> status_pb2.Status:
    """The failed call's rich ``google.rpc.Status``: the one in ``grpc-status-details-bin``
    (ErrorInfo, field violations, retry delay kept) when it matches the call's code, else
    one built from the code and message alone."""
    call = cast(_FailedCall, err)
    code = call.code()
    message = call.details() or code.name
    status = _status_details(call.trailing_metadata())
    if status is not None and status.code == code.value[0]:
        return status
    return status_pb2.Status(code=code.value[0], message=message)


def from_rpc_error(err: grpc.RpcError) -> errors.AgentmeshError:
    """Turn a failed call (``grpc.aio.AioRpcError`` or a sync ``grpc.RpcError`` that is
    also a ``grpc.Call``) into the typed :class:`~agentmesh_client.errors.AgentmeshError`.

    The rich status in ``grpc-status-details-bin`` supplies reason, domain, metadata, field
    violations and retry delay; without it the error is typed from the status code alone.
    """
    if not callable(getattr(err, "code", None)):
        return errors.Internal(str(err) or "rpc failed", reason="UNKNOWN")
    call = cast(_FailedCall, err)
    code, message = call.code(), call.details() or ""
    status = _status_details(call.trailing_metadata())
    if status is not None and status.code != code.value[0]:
        # The details belong to another status (a proxy rewrote the code): trust the code.
        status = None
    result = from_status(code, message, status)
    result.__cause__ = err
    return result
