"""Settings of the orchestrator, read once from `AGENTMESH_ORCHESTRATOR_*` environment variables."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

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
    requests_per_minute: int = Field(
        default=20, ge=0, description="Per-tenant public RPCs per minute; 0 disables the limit."
    )
    tokens_per_minute: int = Field(
        default=30_000,
        ge=0,
        description=(
            "Per-tenant model tokens per minute; 0 disables it. Each model call reserves its"
            " prompt and max_tokens before it starts (waiting while the tenant's budget is"
            " spent) and gives back what it did not use; a new Run/Execute is refused while"
            " the budget is spent."
        ),
    )
    unthrottled_tenants: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description=(
            "Tenants (comma-separated) without the per-minute request and token limits:"
            " `agentmesh up` names its own local tenant, whose one user scripts the command"
            " line; every other tenant keeps the limits."
        ),
    )
    lease_ttl_seconds: float = Field(
        default=15.0, gt=0, description="Session lease time to live; renewed every third of it."
    )
    takeover_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often to look for sessions whose owner died."
    )
    workflow_claim_seconds: float = Field(
        default=15.0,
        gt=0,
        description=(
            "How long a replica's claim on due workflow work (place agents, schedules) lasts;"
            " renewed every third of it while the work runs. A replica killed while holding one"
            " is replaced after this long."
        ),
    )
    workflow_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Longest sleep between looks for due work other replicas scheduled.",
    )
    workflow_lookahead_seconds: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description=(
            "Claim due workflow work this long before it is due and start each item at its due"
            " time, so the claim's round trip is not part of the delay; must be shorter than"
            " the claim. 0: claim only what is already due."
        ),
    )
    workflow_max_in_flight: int = Field(
        default=16, ge=1, description="Due workflow work items a replica runs at once."
    )
    max_running_sessions: int = Field(
        default=64,
        ge=0,
        description=(
            "Sessions this replica runs at once (runs, steps, executions, takeovers); more are"
            " queued, then refused with RESOURCE_EXHAUSTED (REPLICA_AT_CAPACITY) and a RetryInfo"
            " delay before any work starts. 0: no bound. About 30 per CPU core suits the"
            " orchestrator with its memory service on the same machine."
        ),
    )
    max_queued_sessions: int = Field(
        default=64,
        ge=0,
        description=(
            "Runs that may wait (at most admission_queue_seconds) for a running session to end"
            " when max_running_sessions are running; beyond them, runs are refused at once."
        ),
    )
    max_concurrent_requests: int = Field(
        default=64,
        ge=0,
        description=(
            "Unary public RPCs (CreateSession, GetSession, ...) served at once; more wait in a"
            " queue, then are refused with RESOURCE_EXHAUSTED (REPLICA_AT_CAPACITY). Event"
            " streams are not counted. 0: no bound."
        ),
    )
    max_queued_requests: int = Field(
        default=256,
        ge=0,
        description="Unary RPCs that may wait for a place; beyond them, refused at once.",
    )
    admission_queue_seconds: float = Field(
        default=2.0,
        ge=0,
        description=(
            "Longest wait in an admission queue (never past the caller's deadline) before the"
            " call is refused with RESOURCE_EXHAUSTED."
        ),
    )
    admission_retry_after_seconds: float = Field(
        default=1.0,
        gt=0,
        description=(
            "RetryInfo delay of a refused run (plus up to 50% jitter); a refused unary call"
            " is told at most 0.5 s."
        ),
    )
    drain_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "On SIGTERM, how long running sessions get to reach their next turn boundary (the"
            " turn in progress finishes and is stored) before they are abandoned; either way"
            " their leases are released and another replica takes them over. Capped at half"
            " of grace_seconds, so sessions stop before the server cancels their streams."
        ),
    )
    gateway_unavailable_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How long a model call keeps calling an inference gateway it cannot reach"
            " (connection refused or lost), with backoff, before the turn fails with"
            " GATEWAY_UNAVAILABLE; the session's deadline bounds it too."
        ),
    )
    default_route: str = Field(
        default="default", description="Gateway route for built-in agents and agents naming none."
    )
    builtin_context_window_tokens: int = Field(
        default=2048,
        gt=0,
        description=(
            "Context window built-in agents (router, planner, writer, ...) budget their prompt"
            " for, unless their model sets one: small, for the embedded default's small model."
        ),
    )
    router_shortcuts: bool = Field(
        default=True,
        description=(
            "Let the goal's shape decide the router's analysis where it is clear (one short"
            " question: simple; a list of several parts: complex); off: always ask the model."
        ),
    )
    approval_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description=(
            "How long a tool call waits for a human's approval before it is rejected, unless"
            " the session's limits say otherwise."
        ),
    )
    retrieval_passages: int = Field(
        default=3,
        ge=0,
        le=10,
        description=(
            "Passages a research agent's turn retrieves from the session's documents before it"
            " starts (shown as a search_documents call, cited in the answer); 0 turns this off."
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
    replica_id: str | None = Field(
        default=None, description="Lease owner id of this replica; a random one when unset."
    )
    stream_token_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description=(
            "Key that signs stream tokens (CreateStreamToken), the same on every replica, at"
            " least 16 characters; unset: a random one per replica, so a token works only on"
            " the replica that issued it. Secret: never logged."
        ),
    )

    @model_validator(mode="after")
    def _lookahead_within_claim(self) -> OrchestratorSettings:
        if self.workflow_lookahead_seconds >= self.workflow_claim_seconds:
            raise ValueError("workflow_lookahead_seconds must be less than workflow_claim_seconds")
        return self

    @field_validator("unthrottled_tenants", mode="before")
    @classmethod
    def _split_tenants(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
