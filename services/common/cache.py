"""Redis cache-aside with single-flight loading, fail-soft on Redis errors, and no stale entry
surviving an outage.

- Readers use `get_or_load`: a miss loads from the database once per process even when many
  requests miss together (stampede protection), then stores with SET NX, so a reader that loaded
  an old row can never overwrite the fresh value a writer stored meanwhile.
- Writers call `put` (overwrite) after their transaction commits, or `delete`.
- Redis down means slower, never failing: every Redis error is counted, logged once per outage,
  and the call goes to the database; Redis is skipped for a short back-off instead of paying a
  timeout on every request.

Outages and invalidations. A write whose `put`/`delete` cannot reach Redis leaves the old entry
there; if Redis keeps its data through the outage (a network partition, a frozen or overloaded
server, a restart from a snapshot), that entry would be served again afterwards — stale until its
TTL, after the client was told its write succeeded. Hence a namespace generation:

- Every entry lives at `<key>@<generation>`, the generation being the integer at `<prefix>gen`
  (missing = 0). A read is one MGET of the generation and the entry at the generation this
  instance last saw; when the generation moved, the value read is discarded (a miss) and the new
  generation remembered. Writers `put`/`delete` through a small Lua script that reads the
  generation inside Redis, so an invalidation always hits the current namespace. A loader stores
  its value (SET NX) under the generation its read saw: if the generation moved meanwhile, the
  value lands in a dead namespace and is never read.
- An instance that sees ANY Redis failure (read or write) stops using Redis until it has bumped
  the generation (INCR) once Redis answers again — every reader then misses and reloads from
  Postgres. Read failures count too: an instance that lost contact cannot know which
  invalidations other instances lost, and bumping first means none of the instances that saw the
  outage serves a pre-outage entry, whatever order they come back in. A background task retries
  the bump every back-off, so an idle instance whose write was lost bumps within one back-off of
  Redis answering.
- A writer whose `put`/`delete` just failed (a timeout on a busy machine is enough) does not
  answer yet: it tries the bump at once, for up to one back-off, so that its client hears "done"
  only once no instance can read the old entry. Another instance that saw no failure would
  otherwise keep serving it (seen: a block answered, and the next capsule to the blocker was
  still let through by the other recipients instance).
- Left open: when Redis stays unreachable from the writer for that whole back-off, an instance
  that saw no failure at all may serve the entry the writer failed to invalidate, between Redis's
  return and the writer's bump (≤ one more back-off, 1 s by default). Nothing shared but Redis
  could carry the news faster; the TTL bounds it anyway.
- Redis restarting empty (this project runs it without persistence): entries and the generation
  are gone together, every read misses; nothing stale can exist.
- The generation key has no TTL: with an eviction policy other than volatile-* it could be
  evicted and fall back to 0, where only entries older than the first bump could be found; run
  the cache with `volatile-lru` (or none) as the deployment docs say.

The price: one more key in each read's MGET (same round trip), and a cold cache after each
outage or Redis error (counted in `cache_generation_bumps_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as redis
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.common.background import cancel_and_wait
from services.common.telemetry import CACHE_ERRORS, CACHE_REQUESTS

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[bytes | None]]

GENERATION_BUMPS = Counter(
    "cache_generation_bumps_total", "Cache namespace generations bumped after a Redis failure (cache emptied)"
)

# KEYS[1] the generation; ARGV: key, value, ttl → SET key@gen. Returns the generation.
_PUT_LUA = """
local g = redis.call('GET', KEYS[1]) or '0'
redis.call('SET', ARGV[1] .. '@' .. g, ARGV[2], 'EX', ARGV[3])
return g
"""
# KEYS[1] the generation; ARGV: keys → DEL key@gen for each. Returns the generation.
_DELETE_LUA = """
local g = redis.call('GET', KEYS[1]) or '0'
for i = 1, #ARGV do
  redis.call('DEL', ARGV[i] .. '@' .. g)
end
return g
"""


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
        self.generation_key = prefix + "gen"
        self._put_script = self.client.register_script(_PUT_LUA)
        self._delete_script = self.client.register_script(_DELETE_LUA)
        self._backoff_seconds = backoff_seconds
        self._down_until = 0.0
        self._outage_logged = False
        self._generation = "0"  # the last one seen
        self._must_bump = False  # a Redis failure was seen: bump the generation before any use
        self._repair: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}  # key → its shared load

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _stored(self, key: str, generation: str) -> str:
        return f"{key}@{generation}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        CACHE_ERRORS.inc()
        self._down_until = time.monotonic() + self._backoff_seconds
        self._must_bump = True
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("redis unavailable, serving from the database", extra={"fields": {"error": str(exc)}})
        if self._repair is None or self._repair.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the next call repairs
                self._repair = asyncio.get_running_loop().create_task(self._repair_loop())

    def _succeeded(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            log.info("redis is back")

    async def _repair_loop(self) -> None:
        while self._must_bump:
            await asyncio.sleep(max(0.0, self._down_until - time.monotonic()) + 0.01)
            await self._usable()

    async def _usable(self) -> bool:
        """Whether Redis may be used now: not in back-off, and the generation bumped if a failure
        was seen since the last bump."""
        if not self.available:
            return False
        if not self._must_bump:
            return True
        try:
            await self._bump()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        return True

    async def _bump_before_answering(self) -> None:
        """A write-through just failed: bump the generation now, retrying for up to one back-off,
        so the old entry is unreachable before the writer answers (module doc)."""
        give_up_at = time.monotonic() + self._backoff_seconds
        while self._must_bump:
            try:
                await self._bump()
            except (RedisError, OSError):
                if time.monotonic() >= give_up_at:
                    return  # the repair task keeps trying
                await asyncio.sleep(0.05)

    async def _bump(self) -> None:
        """INCR the generation (raises what Redis raised) and end the failure that asked for it."""
        generation = await self.client.incr(self.generation_key)
        self._generation = str(generation)
        self._must_bump = False
        self._down_until = 0.0
        GENERATION_BUMPS.inc()
        log.info("cache generation bumped after a redis failure", extra={"fields": {"generation": generation}})
        self._succeeded()

    async def _read(self, keys: Sequence[str]) -> tuple[str | None, list[bytes | None]]:
        """(the generation the values belong to, or None when Redis was not read; values)."""
        misses: list[bytes | None] = [None] * len(keys)
        if not keys or not await self._usable():
            return None, misses
        seen = self._generation
        try:
            raw = await self.client.mget([self.generation_key, *(self._stored(k, seen) for k in keys)])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None, misses
        self._succeeded()
        head = raw[0]
        current = head.decode() if isinstance(head, bytes) else str(head or "0")
        if current != seen:
            self._generation = current  # values of an older namespace: discarded
            return current, misses
        return current, [v if isinstance(v, bytes) or v is None else v.encode() for v in raw[1:]]

    async def get(self, key: str) -> bytes | None:
        return (await self._read([key]))[1][0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return (await self._read(keys))[1]

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store a value a writer just committed (overwrites whatever is there)."""
        if not await self._usable():
            self._must_bump = True  # the old entry, if any, is still there
            return
        try:
            await self._put_script(keys=[self.generation_key], args=[key, value, ttl_seconds])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            await self._bump_before_answering()

    async def _store_if_absent(self, items: dict[str, bytes], ttl_seconds: int, generation: str) -> None:
        if not items or self._must_bump or not self.available:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(self._stored(key, generation), value, ex=ttl_seconds, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def put_many_if_absent(self, items: dict[str, bytes], ttl_seconds: int) -> None:
        """Store values loaded after a `get_many` miss (under the generation that read saw)."""
        await self._store_if_absent(items, ttl_seconds, self._generation)

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        if not await self._usable():
            self._must_bump = True
            return
        try:
            await self._delete_script(keys=[self.generation_key], args=list(keys))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            await self._bump_before_answering()

    async def get_or_load(self, name: str, key: str, ttl_seconds: int, loader: Loader) -> bytes | None:
        """The cached value of `key`, or the loader's (stored for `ttl_seconds`; None is not stored).
        `name` labels the hit/miss metrics.

        Concurrent misses of one key share one load, run as a task of its own: a caller that is
        cancelled (its client went away) stops waiting, but the load goes on for the others."""
        generation, (cached,) = await self._read([key])
        if cached is not None:
            _counter(name, "hit").inc()
            return cached
        _counter(name, "miss").inc()
        load = self._inflight.get(key)
        if load is None:
            load = asyncio.ensure_future(self._load(key, ttl_seconds, generation, loader))
            load.add_done_callback(_retrieve_exception)
            self._inflight[key] = load
        return await asyncio.shield(load)

    async def _load(self, key: str, ttl_seconds: int, generation: str | None, loader: Loader) -> bytes | None:
        try:
            value = await loader()
            if value is not None and generation is not None:
                await self._store_if_absent({key: value}, ttl_seconds, generation)
            return value
        finally:
            del self._inflight[key]

    async def ping(self) -> bool:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    async def close(self) -> None:
        # Loads whose callers all went away may still run: end them before their client closes.
        await cancel_and_wait(*([self._repair] if self._repair else []), *self._inflight.values())
        await self.client.aclose()


def _retrieve_exception(load: asyncio.Future[bytes | None]) -> None:
    """A load whose every caller was cancelled may end in an error nobody awaits: retrieved here
    (its callers, if any, got it too), so asyncio does not log it as never retrieved."""
    if not load.cancelled():
        load.exception()


@functools.cache
def _counter(cache: str, result: str) -> Counter:
    return CACHE_REQUESTS.labels(cache, result)
