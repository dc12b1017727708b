"""API keys to tenants, cached per replica and dropped as soon as a key is revoked.

The memory service stores only the keys' hashes and resolves a presented secret
(`AuthenticateApiKey`); every replica that checks keys (the orchestrator's edge, the gateway's
HTTP API) caches the answers in an `ApiKeyCache` for `cache_seconds`. A cache that `follow`s
the memory service's `WatchApiKeys` stream drops a key the moment its revocation arrives, so a
revoked key is refused within the stream's latency rather than the cache's lifetime.

While the watch is not in place (before its first message, and from a failure until it is
re-established) a following cache answers nothing from memory: every check goes to the memory
service, since a revocation could be missed meanwhile. Every (re)connection starts with a
reset that drops the whole cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ApiKeyCache", "KeyChanges", "KeyLookup", "KeyOwner"]

_logger = logging.getLogger("agentmesh.api_keys")
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """Whose a valid key is: its tenant and its resource name ("apiKeys/{key_id}")."""

    tenant: str
    name: str


KeyLookup = Callable[[str], Awaitable[KeyOwner | None]]


class KeyChanges(Protocol):
    """One message of the memory service's key watch (`WatchApiKeysResponse`)."""

    @property
    def revoked(self) -> Iterable[str]: ...

    @property
    def reset(self) -> bool: ...


class ApiKeyCache:
    """Secret -> owner (or "not a key"), cached for `cache_seconds`, revoked by push."""

    def __init__(
        self,
        lookup: KeyLookup,
        *,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyOwner | None]] = {}
        self._following = False  # `follow` runs: trust the cache only while watching
        self._watching = False
        self._generation = 0  # bumped by every drop, so a look-up in flight is not cached

    @property
    def watching(self) -> bool:
        """True while revocations are pushed to this cache."""
        return self._watching

    async def owner(self, secret: str) -> KeyOwner | None:
        """Who owns `secret`, or None when it is not a valid key."""
        now = self._clock()
        cached = self._cache.get(secret)
        if self._trusted() and cached is not None and cached[0] > now:
            return cached[1]
        generation = self._generation
        owner = await self._lookup(secret)
        # Not cached when a drop happened meanwhile: the answer may predate a revocation.
        if self._trusted() and self._generation == generation:
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            self._cache[secret] = (now + self._cache_seconds, owner)
        return owner

    def _trusted(self) -> bool:
        return self._watching or not self._following

    def revoke(self, names: Iterable[str]) -> None:
        """Drop the cached secrets of the keys `names`."""
        gone = set(names)
        if not gone:
            return
        self._generation += 1
        for secret, (_, owner) in list(self._cache.items()):
            if owner is not None and owner.name in gone:
                del self._cache[secret]

    def clear(self) -> None:
        """Drop every cached answer."""
        self._generation += 1
        self._cache.clear()

    async def follow(
        self,
        watch: Callable[[], AsyncIterable[KeyChanges]],
        *,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 5.0,
    ) -> None:
        """Apply the key watch's changes until cancelled, re-opening it after any failure
        (`retry_seconds` after a watch that worked, then backing off up to
        `max_retry_seconds` while it keeps failing)."""
        self._following = True
        delay = retry_seconds
        try:
            while True:
                try:
                    async for change in watch():
                        if change.reset:
                            self.clear()
                            self._watching = True
                            delay = retry_seconds
                        self.revoke(change.revoked)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    if delay == retry_seconds:  # once per streak of failures
                        _logger.warning("API key watch failed: %s", type(error).__name__)
                finally:
                    self._watching = False
                    self.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_retry_seconds)
        finally:
            self._following = False
