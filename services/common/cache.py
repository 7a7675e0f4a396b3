"""Redis cache-aside with single-flight loading, fail-soft on Redis errors.

- Readers use `get_or_load`: a miss loads from the database once per process even when many
  requests miss together (stampede protection), then stores with SET NX, so a reader that loaded
  an old row can never overwrite the fresh value a writer stored meanwhile.
- Writers call `put` (overwrite) after their transaction commits, or `delete`.
- Redis down means slower, never failing: every Redis error is counted, logged once per outage,
  and the call goes to the database; Redis is skipped for a short back-off instead of paying a
  timeout on every request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as redis
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.common.telemetry import CACHE_ERRORS, CACHE_REQUESTS

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[bytes | None]]


class Cache:
    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        timeout_seconds: float = 0.25,
        backoff_seconds: float = 1.0,
    ) -> None:
        self.client: redis.Redis = redis.from_url(
            redis_url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            max_connections=256,
        )
        self.prefix = prefix
        self._backoff_seconds = backoff_seconds
        self._down_until = 0.0
        self._outage_logged = False
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        CACHE_ERRORS.inc()
        self._down_until = time.monotonic() + self._backoff_seconds
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("redis unavailable, serving from the database", extra={"fields": {"error": str(exc)}})

    def _succeeded(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            log.info("redis is back")

    async def get(self, key: str) -> bytes | None:
        if not self.available:
            return None
        try:
            value = await self.client.get(key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._succeeded()
        return value  # type: ignore[return-value]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            values = await self.client.mget(keys)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._succeeded()
        return list(values)  # type: ignore[arg-type]

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store a value a writer just committed (overwrites whatever is there)."""
        if not self.available:
            return
        try:
            await self.client.set(key, value, ex=ttl_seconds)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def put_many_if_absent(self, items: dict[str, bytes], ttl_seconds: int) -> None:
        if not items or not self.available:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, value, ex=ttl_seconds, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def delete(self, *keys: str) -> None:
        if not keys or not self.available:
            return
        try:
            await self.client.delete(*keys)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def get_or_load(self, name: str, key: str, ttl_seconds: int, loader: Loader) -> bytes | None:
        """The cached value of `key`, or the loader's (stored for `ttl_seconds`; None is not stored).
        `name` labels the hit/miss metrics."""
        cached = await self.get(key)
        if cached is not None:
            _counter(name, "hit").inc()
            return cached
        _counter(name, "miss").inc()
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await loader()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(value)
        finally:
            del self._inflight[key]
        if value is not None and self.available:
            try:
                await self.client.set(key, value, ex=ttl_seconds, nx=True)
            except (RedisError, OSError) as exc:
                self._failed(exc)
        return value

    async def ping(self) -> bool:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    async def close(self) -> None:
        await self.client.aclose()


@functools.cache
def _counter(cache: str, result: str) -> Counter:
    return CACHE_REQUESTS.labels(cache, result)
