"""The shared API key cache: revoked keys dropped by push, nothing trusted while the push is
down, the whole cache dropped when the watch reconnects (it may have missed revocations)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from agentmesh_common.api_keys import ApiKeyCache, KeyOwner


@dataclass
class Change:
    revoked: list[str] = field(default_factory=list)
    reset: bool = False


class Keys:
    """The memory service's side: valid keys, look-ups counted, and a controllable watch."""

    def __init__(self) -> None:
        self.valid = {"sk-a": KeyOwner("acme", "apiKeys/a"), "sk-b": KeyOwner("acme", "apiKeys/b")}
        self.lookups = 0
        self.changes: asyncio.Queue[Change | Exception] = asyncio.Queue()
        self.opened = 0

    async def lookup(self, secret: str) -> KeyOwner | None:
        self.lookups += 1
        return self.valid.get(secret)

    async def watch(self) -> AsyncIterator[Change]:
        self.opened += 1
        yield Change(reset=True)
        while True:
            change = await self.changes.get()
            if isinstance(change, Exception):
                raise change
            yield change

    def revoke(self, secret: str) -> None:
        owner = self.valid.pop(secret)
        self.changes.put_nowait(Change(revoked=[owner.name]))


async def until(check: object, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_revoked_key_is_dropped_and_other_keys_stay_cached() -> None:
    keys = Keys()
    cache = ApiKeyCache(keys.lookup, cache_seconds=60)
    follower = asyncio.create_task(cache.follow(keys.watch, retry_seconds=0.01))
    try:
        await until(lambda: cache.watching)
        assert await cache.owner("sk-a") == KeyOwner("acme", "apiKeys/a")
        assert await cache.owner("sk-b") is not None
        assert await cache.owner("sk-a") is not None
        assert keys.lookups == 2, "answers are cached while the watch is up"
        keys.revoke("sk-a")
        # Taken off the queue by the follower, which applies it in the same step.
        await until(lambda: keys.changes.empty())
        assert await cache.owner("sk-a") is None
        assert await cache.owner("sk-b") is not None
        assert keys.lookups == 3, "only the revoked key was asked again"
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_nothing_is_trusted_while_the_watch_is_down_and_a_reconnect_clears_all() -> None:
    keys = Keys()
    cache = ApiKeyCache(keys.lookup, cache_seconds=60)
    follower = asyncio.create_task(cache.follow(keys.watch, retry_seconds=0.2))
    try:
        await until(lambda: cache.watching)
        await cache.owner("sk-a")
        keys.changes.put_nowait(ConnectionError("memory service restarted"))
        await until(lambda: not cache.watching)
        # A revocation now could not reach this cache: every check asks the memory service.
        keys.valid.pop("sk-a")
        assert await cache.owner("sk-a") is None
        before = keys.lookups
        await cache.owner("sk-b")
        await cache.owner("sk-b")
        assert keys.lookups == before + 2
        await until(lambda: cache.watching)  # re-opened
        assert keys.opened == 2
        await cache.owner("sk-b")
        await cache.owner("sk-b")
        assert keys.lookups == before + 3, "cached again once watching"
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_without_a_watch_answers_are_cached_for_their_lifetime() -> None:
    now = [0.0]
    keys = Keys()
    cache = ApiKeyCache(keys.lookup, cache_seconds=30, clock=lambda: now[0])
    await cache.owner("sk-a")
    await cache.owner("sk-a")
    assert keys.lookups == 1
    now[0] = 31.0
    await cache.owner("sk-a")
    assert keys.lookups == 2
