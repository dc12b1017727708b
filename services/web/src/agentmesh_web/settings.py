"""Settings of the web edge, read once from `AGENTMESH_WEB_*` environment variables."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from agentmesh_common import ServiceSettings


class WebSettings(ServiceSettings):
    """Typed settings of the web edge."""

    model_config = SettingsConfigDict(env_prefix="AGENTMESH_WEB_", extra="ignore", frozen=True)

    port: int = Field(
        default=50055,
        ge=0,
        le=65535,
        description="gRPC port (health and reflection only); 0 picks a free one.",
    )
    metrics_port: int | None = Field(
        default=9465,
        ge=0,
        le=65535,
        description="Prometheus HTTP port; 0 picks a free one; none/off/empty disables it.",
    )
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="HTTP port of the JSON API, the event streams and the UI; 0 picks a free one.",
    )
    orchestrator_target: str = Field(
        default="127.0.0.1:50051", description="gRPC address of the orchestrator."
    )
    cors_allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description=(
            "Origins (scheme://host[:port], comma-separated) whose pages may call the API from"
            " a browser; '*' allows any. Empty: same-origin only (the UI needs nothing more)."
        ),
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=32 * 1024 * 1024,
        description="Largest request body accepted; a larger one is refused with 413.",
    )
    unary_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Deadline of each unary call to the orchestrator."
    )
    stream_buffer_bytes: int = Field(
        default=1024 * 1024,
        ge=16 * 1024,
        le=64 * 1024 * 1024,
        description=(
            "Bytes of events each stream may hold for its client; when full, the edge stops"
            " reading from the orchestrator until the client catches up."
        ),
    )
    slow_client_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description=(
            "A client whose full buffer gets no room for this long is cut off with a"
            " SLOW_CONSUMER error naming its last seq, from which it resumes."
        ),
    )
    keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="An idle event stream sends an SSE comment or WebSocket ping this often.",
    )
    ui_enabled: bool = Field(default=True, description="Serve the monitoring UI at /.")
    trace_url_template: str | None = Field(
        default=None,
        description=(
            "Link from the UI to a session's trace in your tracing UI, with {trace_id} in it,"
            " e.g. http://localhost:16686/trace/{trace_id} (Jaeger); unset: no links."
        ),
    )

    @field_validator("cors_allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
        return value

    @field_validator("cors_allowed_origins", mode="after")
    @classmethod
    def _origins_are_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com")
        return value

    @field_validator("trace_url_template", mode="after")
    @classmethod
    def _template_has_trace_id(cls, value: str | None) -> str | None:
        if value is not None and "{trace_id}" not in value:
            raise ValueError("must contain {trace_id}")
        return value
