"""Settings of the inference gateway, read once from `AGENTMESH_GATEWAY_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from agentmesh_common import ServiceSettings

_DISABLED = frozenset({"", "none", "off", "disabled"})


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

    http_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "Port of the OpenAI- and Anthropic-compatible HTTP API (/v1/chat/completions,"
            " /v1/models, /v1/messages); 0 picks a free one; unset/off: no HTTP API"
            " (`agentmesh up` serves it on 4000)."
        ),
    )
    http_auth: Literal["api_key", "none"] = Field(
        default="api_key",
        description=(
            "api_key: callers present a tenant API key (resolved by the memory service);"
            " none: no authentication, every call is tenant HTTP_TENANT (trusted networks only)."
        ),
    )
    http_tenant: str = Field(
        default="default", min_length=1, description="The tenant of every call when HTTP_AUTH=none."
    )
    memory_target: str | None = Field(
        default=None,
        description=(
            "gRPC address of the memory service: resolves API keys and records every HTTP call"
            " in the usage ledger. Required by the HTTP API unless HTTP_AUTH=none."
        ),
    )
    api_key_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How long a resolved API key is trusted without asking; a revoked key is dropped"
            " at once (the memory service pushes revocations), and nothing is trusted while"
            " that push is down."
        ),
    )
    cache_backend: Literal["memory", "redis", "off"] = Field(
        default="memory",
        description=(
            "Response cache of routes that opt in: memory (in-process LRU), redis (shared by"
            " replicas, CACHE_REDIS_URL), off."
        ),
    )
    cache_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0, description="Byte budget of the in-process cache."
    )
    cache_redis_url: str | None = Field(
        default=None, description="redis:// URL of the shared cache (CACHE_BACKEND=redis)."
    )

    @field_validator("http_port", mode="before")
    @classmethod
    def _http_port_disabled(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _DISABLED:
            return None
        return value

    @model_validator(mode="after")
    def _http_needs_keys(self) -> Self:
        if self.http_port is not None and self.http_auth == "api_key" and not self.memory_target:
            raise ValueError(
                "AGENTMESH_GATEWAY_HTTP_PORT needs AGENTMESH_GATEWAY_MEMORY_TARGET (API keys are"
                " resolved by the memory service), or AGENTMESH_GATEWAY_HTTP_AUTH=none"
            )
        if self.cache_backend == "redis" and not self.cache_redis_url:
            raise ValueError(
                "AGENTMESH_GATEWAY_CACHE_BACKEND=redis needs AGENTMESH_GATEWAY_CACHE_REDIS_URL"
            )
        return self
