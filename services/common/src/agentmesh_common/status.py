"""The one table between domain errors and gRPC status codes (:mod:`agentmesh_client.status`,
re-exported), plus :func:`to_grpc_status`, which servers need and the slim client does not
(it uses grpcio-status)."""

from __future__ import annotations

import grpc
from grpc_status import rpc_status

from agentmesh_client import errors
from agentmesh_client.status import (
    STATUS_CODES,
    STATUS_DETAILS_KEY,
    from_rpc_error,
    from_status,
    rpc_status_of,
    status_code_for,
    to_rpc_status,
)

__all__ = [
    "STATUS_CODES",
    "STATUS_DETAILS_KEY",
    "from_rpc_error",
    "from_status",
    "rpc_status_of",
    "status_code_for",
    "to_grpc_status",
    "to_rpc_status",
]


def to_grpc_status(exc: errors.AgentmeshError, domain: str) -> grpc.Status:
    """Like :func:`to_rpc_status`, as the ``grpc.Status`` that ``context.abort`` takes."""
    return rpc_status.to_status(to_rpc_status(exc, domain))
