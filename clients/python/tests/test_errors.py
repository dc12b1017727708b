"""A status from the wire becomes the class of its reason, else of its code (no server here)."""

from __future__ import annotations

import grpc
import pytest

from agentmesh_client import errors
from agentmesh_client.status import from_status, status_code_for, to_rpc_status


@pytest.mark.parametrize(
    ("sent", "expected", "code_class"),
    [
        (
            errors.NotFound("no s1", reason="SESSION_NOT_FOUND"),
            errors.SessionNotFound,
            errors.NotFound,
        ),
        (errors.AgentNotFound("no a"), errors.AgentNotFound, errors.NotFound),
        (
            errors.ResourceExhausted("slow down", reason="TENANT_RATE_LIMITED", retry_after=2.5),
            errors.RateLimited,
            errors.ResourceExhausted,
        ),
        (
            errors.FailedPrecondition("ended", reason="SESSION_ENDED"),
            errors.SessionEnded,
            errors.FailedPrecondition,
        ),
        (
            errors.Unauthenticated("bad key", reason="API_KEY_INVALID"),
            errors.ApiKeyInvalid,
            errors.Unauthenticated,
        ),
        (
            errors.InvalidArgument(
                "again",
                reason="REQUEST_ID_REUSED",
                violations=[errors.FieldViolation("request_id", "reused")],
            ),
            errors.RequestIdReused,
            errors.InvalidArgument,
        ),
    ],
)
def test_a_common_reason_arrives_as_its_own_class_under_its_codes(
    sent: errors.AgentmeshError, expected: type, code_class: type
) -> None:
    status = to_rpc_status(sent, "agentmesh.test")
    received = from_status(status_code_for(sent), status.message, status)
    assert type(received) is expected
    assert isinstance(received, code_class)
    assert received.reason == sent.reason
    assert getattr(received, "retry_after", None) == getattr(sent, "retry_after", None)
    assert getattr(received, "violations", None) == getattr(sent, "violations", None)


def test_a_reason_without_a_class_keeps_the_codes_class_and_says_the_reason() -> None:
    status = to_rpc_status(errors.NotFound("x", reason="COLLECTION_NOT_FOUND"), "d")
    received = from_status(grpc.StatusCode.NOT_FOUND, "x", status)
    assert type(received) is errors.NotFound
    assert received.reason == "COLLECTION_NOT_FOUND"


def test_a_reason_under_another_code_is_typed_by_the_code() -> None:
    # A proxy, or a service that raised the reason under another code: the code decides.
    status = to_rpc_status(errors.FailedPrecondition("x", reason="SESSION_NOT_FOUND"), "d")
    received = from_status(grpc.StatusCode.FAILED_PRECONDITION, "x", status)
    assert type(received) is errors.FailedPrecondition
    assert received.reason == "SESSION_NOT_FOUND"


def test_every_reason_class_is_registered_under_its_reason() -> None:
    for reason, cls in errors.REASON_TYPES.items():
        assert cls.default_reason == reason
        assert cls.__name__ in errors.__all__
