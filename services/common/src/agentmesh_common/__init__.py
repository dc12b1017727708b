"""agentmesh_common: the shared runtime of every agentmesh service.

Server bootstrap (:func:`build_server`, :func:`run`), interceptors, domain errors and their
status mapping, telemetry, typed settings and client channels.
"""

from .channel import (
    TENANT_METADATA_KEY,
    ClientTLS,
    create_channel,
    tenant_from_context,
    with_tenant,
)
from .errors import (
    Aborted,
    AgentmeshError,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .interceptors import server_interceptors
from .metrics import MetricFactory, RpcMetrics, start_metrics_server
from .runtime import Build, run, serve
from .server import Registration, ServiceServer, build_server
from .settings import ServiceSettings, SettingsError, load_settings
from .status import (
    from_rpc_error,
    rpc_status_of,
    status_code_for,
    to_grpc_status,
    to_rpc_status,
)
from .telemetry import (
    JsonFormatter,
    Telemetry,
    configure_logging,
    current_span_id,
    current_trace_id,
    setup_tracing,
)

__all__ = [
    "TENANT_METADATA_KEY",
    "Aborted",
    "AgentmeshError",
    "AlreadyExists",
    "Build",
    "Cancelled",
    "ClientTLS",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "JsonFormatter",
    "MetricFactory",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Registration",
    "ResourceExhausted",
    "RpcMetrics",
    "ServiceServer",
    "ServiceSettings",
    "SettingsError",
    "Telemetry",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "build_server",
    "configure_logging",
    "create_channel",
    "current_span_id",
    "current_trace_id",
    "from_rpc_error",
    "load_settings",
    "rpc_status_of",
    "run",
    "serve",
    "server_interceptors",
    "setup_tracing",
    "start_metrics_server",
    "status_code_for",
    "tenant_from_context",
    "to_grpc_status",
    "to_rpc_status",
    "with_tenant",
]
