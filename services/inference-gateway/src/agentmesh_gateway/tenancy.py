"""Tenants of the HTTP API: API keys to tenants, and the usage ledger, both in the memory service.

Keys are resolved exactly as the orchestrator's edge resolves them, with the same cache
(``agentmesh_common.api_keys``): the memory service stores only their hashes and answers
``AuthenticateApiKey``; answers (also "no such key") are cached for ``cache_seconds``, and a
revoked key is dropped as soon as the memory service's ``WatchApiKeys`` stream says so.
Every call that reached a provider, or was answered from the cache, is recorded with
``RecordExecution`` under the caller's tenant, so ``GetUsage`` shows spend per tenant key.
Recording happens after the answer was sent, in batches, and never fails a call.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
import grpc.aio
from google.protobuf import duration_pb2
from google.rpc import code_pb2, status_pb2

from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_common import (
    TENANT_METADATA_KEY,
    NotFound,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from agentmesh_common.api_keys import ApiKeyCache, KeyLookup, KeyOwner

from .domain import Usage
from .protoconv import usage_to_proto

_logger = logging.getLogger("agentmesh.gateway.http")
MEMORY_TIMEOUT = 5.0


class Outcome:
    SUCCEEDED = memory_pb2.EXECUTION_OUTCOME_SUCCEEDED
    FAILED = memory_pb2.EXECUTION_OUTCOME_FAILED
    CANCELLED = memory_pb2.EXECUTION_OUTCOME_CANCELLED


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP call for the usage ledger."""

    tenant: str
    route: str
    provider: str
    model: str
    attempts: int
    latency_seconds: float
    time_to_first_token_seconds: float | None
    usage: Usage
    outcome: int
    error_code: str = ""  # canonical code name, e.g. "UNAVAILABLE"
    error_message: str = ""


class Ledger(Protocol):
    def record_later(self, call: CallRecord) -> None:
        """Record ``call`` soon, without holding the caller's answer."""
        ...

    async def drain(self, timeout: float = 5.0) -> None: ...  # noqa: ASYNC109


class TenantKeys:
    """API key -> tenant, cached (answers and refusals) for ``cache_seconds``; run
    ``keys.follow`` to drop revoked keys at once."""

    def __init__(
        self,
        lookup: KeyLookup,
        *,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = ApiKeyCache(lookup, cache_seconds=cache_seconds, clock=clock)

    async def tenant_for(self, key: str | None) -> str:
        """The tenant of ``key``; :class:`Unauthenticated` when missing or not valid."""
        if not key:
            raise Unauthenticated(
                "an API key is required: send 'Authorization: Bearer <key>' or 'x-api-key'",
                reason="API_KEY_MISSING",
            )
        owner = await self.keys.owner(key)
        if owner is None:
            raise Unauthenticated("the API key is not valid", reason="API_KEY_INVALID")
        return owner.tenant


class MemoryTenancy:
    """Key look-ups and ledger records over one channel to the memory service.

    Records are batched: they wait up to ``flush_seconds`` (or until ``max_batch`` are
    queued) and go as one ``BatchRecordExecutions`` per tenant, one transaction in memory
    instead of one per call.
    """

    def __init__(
        self, channel: grpc.aio.Channel, *, flush_seconds: float = 0.2, max_batch: int = 256
    ) -> None:
        self._stub = memory_pb2_grpc.MemoryServiceStub(channel)
        self._flush_seconds = flush_seconds
        self._max_batch = max_batch
        self._queue: list[CallRecord] = []
        self._timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def watch_keys(self) -> AsyncIterable[memory_pb2.WatchApiKeysResponse]:
        """The memory service's stream of revoked keys (for ``ApiKeyCache.follow``)."""
        return self._stub.WatchApiKeys(memory_pb2.WatchApiKeysRequest())

    async def lookup(self, secret: str) -> KeyOwner | None:
        try:
            reply = await self._stub.AuthenticateApiKey(
                memory_pb2.AuthenticateApiKeyRequest(secret=secret), timeout=MEMORY_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, NotFound | Unauthenticated):
                return None
            raise Unavailable(
                "API keys cannot be checked right now (memory service)",
                retry_after=1.0,
                reason="KEY_SERVICE_UNAVAILABLE",
            ) from None
        return KeyOwner(reply.api_key.tenant, reply.api_key.name)

    def record_later(self, call: CallRecord) -> None:
        """Queue ``call`` for the next batch; never holds the caller's answer."""
        self._queue.append(call)
        if len(self._queue) >= self._max_batch:
            self._flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._flush_seconds, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queue = self._queue, []
        by_tenant: dict[str, list[CallRecord]] = {}
        for call in batch:
            by_tenant.setdefault(call.tenant, []).append(call)
        for tenant, calls in by_tenant.items():
            task = asyncio.get_running_loop().create_task(self._send(tenant, calls))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _send(self, tenant: str, calls: list[CallRecord]) -> None:
        try:
            await self._stub.BatchRecordExecutions(
                memory_pb2.BatchRecordExecutionsRequest(executions=[_execution(c) for c in calls]),
                metadata=((TENANT_METADATA_KEY, tenant),),
                timeout=MEMORY_TIMEOUT,
            )
        except grpc.aio.AioRpcError as exc:
            _logger.warning(
                "usage not recorded",
                extra={"tenant": tenant, "calls": len(calls), "code": exc.code().name},
            )

    async def drain(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Send what is queued now and wait for every batch in flight (at shutdown)."""
        if self._queue:
            self._flush()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)


def _execution(call: CallRecord) -> memory_pb2.Execution:
    execution = memory_pb2.Execution(
        route=call.route,
        provider=call.provider,
        model=call.model,
        attempt=call.attempts,
        latency=_duration(call.latency_seconds),
        usage=usage_to_proto(call.usage),
        outcome=call.outcome,  # type: ignore[arg-type]
        idempotency_key=f"http-{uuid.uuid4().hex}",
    )
    if call.time_to_first_token_seconds is not None:
        execution.time_to_first_token.CopyFrom(_duration(call.time_to_first_token_seconds))
    if call.error_code:
        execution.error.CopyFrom(
            status_pb2.Status(
                code=code_pb2.Code.Value(call.error_code), message=call.error_message[:500]
            )
        )
    return execution


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(max(0, round(seconds * 1e9)))
    return out
