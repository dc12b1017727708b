"""Settings of the orchestrator, read once from `AGENTMESH_ORCHESTRATOR_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from agentmesh_common import ServiceSettings


class OrchestratorSettings(ServiceSettings):
    """Typed settings of the orchestrator."""

    model_config = SettingsConfigDict(
        env_prefix="AGENTMESH_ORCHESTRATOR_", extra="ignore", frozen=True
    )

    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        default=9461,
        ge=0,
        le=65535,
        description="Prometheus HTTP port; 0 picks a free one; none/off/empty disables it.",
    )

    memory_target: str = Field(
        default="127.0.0.1:50054", description="gRPC address of the memory service."
    )
    gateway_target: str = Field(
        default="127.0.0.1:50052", description="gRPC address of the inference gateway."
    )
