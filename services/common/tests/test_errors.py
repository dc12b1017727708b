"""Domain errors <-> google.rpc.Status, without and with a real server in between."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2, status_pb2

from agentmesh_common import (
    AgentmeshError,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    from_rpc_error,
    status_code_for,
    to_rpc_status,
)
from agentmesh_common.status import from_status

from .conftest import ERROR_DOMAIN, Echo, collect


class SessionNotFound(NotFound):
    default_reason = "SESSION_NOT_FOUND"


def _unpack(status: status_pb2.Status, message_type: type) -> object:
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):  # type: ignore[attr-defined]
            message = message_type()
            detail.Unpack(message)
            return message
    raise AssertionError(f"no {message_type.__name__} in status")


def test_service_specific_subclass_maps_by_nearest_ancestor() -> None:
    exc = SessionNotFound("session s1 not found")
    assert status_code_for(exc) == grpc.StatusCode.NOT_FOUND
    status = to_rpc_status(exc, "agentmesh.memory")
    info = _unpack(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("SESSION_NOT_FOUND", "agentmesh.memory")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "exc",
    [
        NotFound("gone", reason="MEMORY_GONE", metadata={"agent": "a"}),
        InvalidArgument("bad", violations=[FieldViolation("a.b", "must be set")]),
        ResourceExhausted("later", retry_after=1.5),
        Unavailable("down", retry_after=0.25),
        Unavailable("down, no hint"),
        Unimplemented("not yet"),
        Internal("oops"),
    ],
)
def test_status_round_trip_in_process(exc: AgentmeshError) -> None:
    status = to_rpc_status(exc, "agentmesh.test")
    back = from_status(status_code_for(exc), status.message, status)
    assert type(back) is type(exc)
    assert (back.message, back.reason, dict(back.metadata)) == (
        exc.message,
        exc.reason,
        dict(exc.metadata),
    )
    assert back.domain == "agentmesh.test"
    assert getattr(back, "violations", None) == getattr(exc, "violations", None)
    assert getattr(back, "retry_after", None) == getattr(exc, "retry_after", None)


def test_the_services_errors_are_the_slim_clients_classes() -> None:
    import agentmesh_client.errors
    import agentmesh_common.errors

    for name in agentmesh_client.errors.__all__:
        assert getattr(agentmesh_common.errors, name) is getattr(agentmesh_client.errors, name)
    with pytest.raises(agentmesh_client.errors.InvalidArgument):
        raise InvalidArgument.for_field("a", "b")


def _rich_status(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    trailers: Any = err.trailing_metadata()  # aio: (key, value) pairs; the stubs disagree
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no grpc-status-details-bin trailer")


async def _say_error(echo: Echo, value: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await echo.say()(StringValue(value=value))
    return info.value


async def test_not_found_reaches_client_with_error_info(echo: Echo) -> None:
    err = await _say_error(echo, "not_found")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "agent 'x' not found"
    exc = from_rpc_error(err)
    assert isinstance(exc, NotFound)
    assert (exc.reason, exc.domain, dict(exc.metadata)) == (
        "AGENT_NOT_FOUND",
        ERROR_DOMAIN,
        {"agent": "x"},
    )


async def test_invalid_argument_carries_field_violations(echo: Echo) -> None:
    err = await _say_error(echo, "invalid")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = _unpack(_rich_status(err), error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [  # type: ignore[attr-defined]
        ("agent.name", "must not be empty"),
        ("agent.temperature", "must be between 0 and 2"),
    ]
    exc = from_rpc_error(err)
    assert isinstance(exc, InvalidArgument)
    assert exc.reason == "INVALID_ARGUMENT"
    assert exc.violations == (
        FieldViolation("agent.name", "must not be empty"),
        FieldViolation("agent.temperature", "must be between 0 and 2"),
    )


async def test_resource_exhausted_carries_retry_info(echo: Echo) -> None:
    err = await _say_error(echo, "exhausted")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = _unpack(_rich_status(err), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000  # type: ignore[attr-defined]
    exc = from_rpc_error(err)
    assert isinstance(exc, ResourceExhausted)
    assert exc.retry_after == 1.5


async def test_unexpected_exception_is_internal_without_details(
    echo: Echo, caplog: pytest.LogCaptureFixture
) -> None:
    err = await _say_error(echo, "boom")
    assert err.code() == grpc.StatusCode.INTERNAL
    details = err.details() or ""
    assert details.startswith("internal error (trace ")
    assert "secret" not in details
    assert "Traceback" not in details
    assert "secret" not in (err.debug_error_string() or "")
    # The trace id in the message is the server span's, and the traceback is logged there.
    (server_span,) = [s for s in echo.spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert f"{server_span.context.trace_id:032x}" in details
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert logged
    assert "secret database password" in str(logged[0])
    assert isinstance(from_rpc_error(err), Internal)


async def test_not_implemented_names_the_method(echo: Echo) -> None:
    err = await _say_error(echo, "unimplemented")
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.details() == "/test.v1.Echo/Say is not implemented yet"
    assert isinstance(from_rpc_error(err), Unimplemented)


async def test_handler_abort_passes_through_unchanged(echo: Echo) -> None:
    err = await _say_error(echo, "abort")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "handler aborted itself"


@pytest.mark.parametrize("method", ["Count", "CountByWrite"])
async def test_stream_error_after_messages(echo: Echo, method: str) -> None:
    received, error = await collect(echo.count(method)(StringValue(value="not_found")))
    assert received == (["0", "1"] if method == "Count" else ["0", "1", "2"])
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    exc = from_rpc_error(error)
    assert isinstance(exc, NotFound)
    assert (exc.reason, exc.domain) == ("AGENT_NOT_FOUND", ERROR_DOMAIN)


async def test_stream_unexpected_exception_is_internal(echo: Echo) -> None:
    received, error = await collect(echo.count()(StringValue(value="boom")))
    assert received == ["0", "1"]
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (error.details() or "")


async def test_unknown_method_is_unimplemented(echo: Echo) -> None:
    missing = echo.channel.unary_unary(
        "/test.v1.Echo/Missing", StringValue.SerializeToString, StringValue.FromString
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await missing(StringValue(value="x"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
