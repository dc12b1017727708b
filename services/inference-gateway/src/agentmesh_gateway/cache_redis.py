"""The shared response cache on Redis (several gateway replicas see the same answers)."""

from __future__ import annotations

import redis.asyncio as redis


class RedisCache:
    """:class:`~agentmesh_gateway.cache.CacheBackend` on one Redis connection pool."""

    name = "redis"

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        await self._client.set(key, value, px=max(1, round(ttl_seconds * 1000)))

    async def ttl_ms(self, key: str) -> int:
        """Milliseconds the key has left (-2: absent), for operators and tests."""
        return int(await self._client.pttl(key))

    async def aclose(self) -> None:
        await self._client.aclose()
