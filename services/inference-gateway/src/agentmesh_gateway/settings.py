"""Settings of the inference gateway, read once from `AGENTMESH_GATEWAY_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from agentmesh_common import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Typed settings of the inference gateway."""

    model_config = SettingsConfigDict(env_prefix="AGENTMESH_GATEWAY_", extra="ignore", frozen=True)

    port: int = Field(default=50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        default=9462,
        ge=0,
        le=65535,
        description="Prometheus HTTP port; 0 picks a free one; none/off/empty disables it.",
    )

    runner_target: str = Field(
        default="127.0.0.1:50053", description="gRPC address of the local runner."
    )
    routes_file: Path | None = Field(
        default=None, description="YAML routes file; unset serves one route to the local runner."
    )
    retry_base_seconds: float = Field(
        default=0.25, gt=0, le=30, description="First retry backoff; doubles per retry, jittered."
    )
    retry_max_seconds: float = Field(
        default=8.0, gt=0, le=120, description="Largest backoff between two retries."
    )
    max_rate_limit_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="Longest a call waits for a rate limit when the caller allows waiting.",
    )
