"""One error body for every HTTP failure, as grpc-gateway and Google APIs write it.

``{"code": 5, "status": "NOT_FOUND", "message": "...", "details": [...]}``: `code` is the gRPC
code, `details` the `google.rpc.Status` details in canonical JSON (``@type`` then the fields:
ErrorInfo with the reason, BadRequest field violations, RetryInfo). The HTTP status follows the
gRPC code (the table of google/rpc/code.proto); a RetryInfo also becomes `Retry-After`.
Failures of the edge itself (no such path, a body too large) use the same shape.
"""

from __future__ import annotations

import json
import math

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh_common import AgentmeshError, rpc_status_of, to_rpc_status

__all__ = ["HTTP_STATUS", "ErrorReply", "edge_error", "from_exception", "from_rpc_error"]

DOMAIN = "web.agentmesh.dev"

HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}


class ErrorReply:
    """An HTTP status, the JSON error body and its headers."""

    def __init__(self, status: status_pb2.Status, http_status: int | None = None) -> None:
        self.status = status
        self.http_status = http_status or HTTP_STATUS.get(status.code, 500)
        self.headers: dict[str, str] = {}
        retry = _retry_after(status)
        if retry is not None:
            self.headers["Retry-After"] = str(max(1, math.ceil(retry)))

    @property
    def body(self) -> dict[str, object]:
        document = json_format.MessageToDict(self.status)
        return {
            "code": self.status.code,
            "status": code_pb2.Code.Name(self.status.code),
            "message": self.status.message,
            "details": document.get("details", []),
        }

    def json(self) -> str:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":"))

    @property
    def reason(self) -> str:
        info = error_details_pb2.ErrorInfo()
        for detail in self.status.details:
            if detail.Unpack(info):
                return info.reason
        return code_pb2.Code.Name(self.status.code)


def from_rpc_error(error: grpc.RpcError) -> ErrorReply:
    """The reply for a failed call to the orchestrator, its rich status kept."""
    return ErrorReply(rpc_status_of(error))


def from_exception(error: AgentmeshError) -> ErrorReply:
    """The reply for an error the edge raised itself (bad JSON, bad query)."""
    return ErrorReply(to_rpc_status(error, DOMAIN))


def edge_error(code: int, *, reason: str, message: str, http_status: int) -> ErrorReply:
    """A failure of the edge itself that has no gRPC call behind it (404, 405, 413)."""
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    return ErrorReply(status, http_status)


def _retry_after(status: status_pb2.Status) -> float | None:
    retry = error_details_pb2.RetryInfo()
    for detail in status.details:
        if detail.Unpack(retry):
            return retry.retry_delay.ToNanoseconds() / 1e9
    return None
