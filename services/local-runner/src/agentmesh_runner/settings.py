"""Settings of the local runner, read once from `AGENTMESH_RUNNER_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from agentmesh_common import ServiceSettings


class RunnerSettings(ServiceSettings):
    """Typed settings of the local runner."""

    model_config = SettingsConfigDict(env_prefix="AGENTMESH_RUNNER_", extra="ignore", frozen=True)

    port: int = Field(default=50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        default=9463,
        ge=0,
        le=65535,
        description="Prometheus HTTP port; 0 picks a free one; none/off/empty disables it.",
    )

    models_dir: Path = Field(
        default=Path(".data/models"),
        description="Directory whose subdirectories are models served by name.",
    )
