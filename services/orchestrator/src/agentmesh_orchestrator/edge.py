"""The public edge: API keys to tenants, per-tenant rate limits, and input bounds.

Every public RPC presents an API key (`authorization: Bearer <key>`, or `x-api-key`). Keys are
resolved by the memory service (which stores only their hashes) and cached here
(`agentmesh_common.api_keys`), each dropped as soon as the memory service says it was revoked.
A stream token (`stream_tokens`) may stand in for a key, for one session's stream only.
Each tenant has a requests-per-minute and a tokens-per-minute budget (token buckets refilled
continuously); an empty bucket answers RESOURCE_EXHAUSTED with the time until it refills.
Tokens are charged per model call (`reserve_tokens` before it starts, `settle_tokens` after), so
a running session's calls wait for the tenant's bucket instead of running past it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from agentmesh_common import ResourceExhausted, Unauthenticated
from agentmesh_common.api_keys import ApiKeyCache, KeyLookup

from .stream_tokens import StreamTokens, is_stream_token

Metadata = Sequence[tuple[str, str | bytes]]


def presented_key(metadata: Metadata) -> str | None:
    """The API key a caller presented, if any."""
    for key, value in metadata:
        text = value.decode() if isinstance(value, bytes) else value
        if key == "authorization":
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif key == "x-api-key" and text.strip():
            return text.strip()
    return None


class Authenticator:
    """Resolves API keys to tenants, caching answers for `cache_seconds` (see `keys`)."""

    def __init__(
        self,
        resolve: KeyLookup,
        *,
        stream_tokens: StreamTokens,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_tokens = stream_tokens
        # Follow the memory service's key watch (`keys.follow`) to drop revoked keys at once.
        self.keys = ApiKeyCache(resolve, cache_seconds=cache_seconds, clock=clock)

    async def tenant_for(self, metadata: Metadata, *, session: str | None = None) -> str:
        """The caller's tenant; `Unauthenticated` without a valid key.

        A stream token is accepted only when the call is about ``session`` and the token was
        issued for it (`PermissionDenied` otherwise): pass the session for calls that allow one.
        """
        key = presented_key(metadata)
        if key is None:
            raise Unauthenticated(
                "an API key is required: send 'authorization: Bearer <key>'",
                reason="API_KEY_MISSING",
            )
        if is_stream_token(key):
            grant = self.stream_tokens.verify(key)
            grant.check_scope(session or "")
            return grant.tenant
        owner = await self.keys.owner(key)
        if owner is None:
            raise Unauthenticated("the API key is not valid", reason="API_KEY_INVALID")
        return owner.tenant


@dataclass
class _Bucket:
    capacity: float
    tokens: float
    updated: float

    def refill(self, now: float, per_second: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * per_second)
        self.updated = now


class RateLimiter:
    """Per-tenant requests-per-minute and tokens-per-minute limits (0 disables one); the
    `unthrottled` tenants have none (the embedded default's own local tenant)."""

    def __init__(
        self,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        unthrottled: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._sleep = sleep
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._unthrottled = frozenset(unthrottled)
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def admit_request(self, tenant: str) -> None:
        """Take one request from the tenant's budget or raise `ResourceExhausted`."""
        if self._rpm <= 0 or tenant in self._unthrottled:
            return
        bucket = self._bucket(self._requests, tenant, self._rpm)
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / (self._rpm / 60)
            raise ResourceExhausted(
                f"tenant request limit of {self._rpm} per minute reached",
                reason="TENANT_RATE_LIMITED",
                retry_after=round(wait, 3),
            )
        bucket.tokens -= 1

    def admit_tokens(self, tenant: str) -> None:
        """Refuse new work while the tenant's token budget is spent."""
        if self._tpm <= 0 or tenant in self._unthrottled:
            return
        bucket = self._bucket(self._tokens, tenant, self._tpm)
        if bucket.tokens <= 0:
            wait = -bucket.tokens / (self._tpm / 60) + 1
            raise ResourceExhausted(
                f"tenant token limit of {self._tpm} per minute reached",
                reason="TENANT_TOKENS_EXHAUSTED",
                retry_after=round(wait, 3),
            )

    async def reserve_tokens(self, tenant: str, tokens: int) -> int:
        """Wait until the tenant's bucket holds `tokens` (at most its capacity), take them and
        return them: each model call reserves its prompt and max_tokens before it starts, so
        a running session is throttled to the tenant's rate. The bucket may go negative when
        a call reserves more than the whole budget; later calls then wait to pay it back."""
        if self._tpm <= 0 or tokens <= 0 or tenant in self._unthrottled:
            return 0
        per_second = self._tpm / 60
        while True:
            bucket = self._bucket(self._tokens, tenant, self._tpm)
            needed = min(tokens, bucket.capacity)
            if bucket.tokens >= needed:
                bucket.tokens -= tokens
                return tokens
            await self._sleep((needed - bucket.tokens) / per_second)

    def settle_tokens(self, tenant: str, reserved: int, used: int) -> None:
        """A call ended: give back what it reserved and did not use (or charge the excess)."""
        if self._tpm <= 0 or reserved <= 0 or tenant in self._unthrottled:
            return
        bucket = self._bucket(self._tokens, tenant, self._tpm)
        bucket.tokens = min(bucket.capacity, bucket.tokens + reserved - max(used, 0))

    def _bucket(self, buckets: dict[str, _Bucket], tenant: str, per_minute: int) -> _Bucket:
        now = self._clock()
        bucket = buckets.get(tenant)
        if bucket is None:
            bucket = buckets[tenant] = _Bucket(per_minute, per_minute, now)
        else:
            bucket.refill(now, per_minute / 60)
        return bucket
