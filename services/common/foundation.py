"""What every service process is built on, wired in one place: page-token keys, logging, the
server host, the database pool, the Redis cache, the process's change feed, the ended sessions,
the access-token verifier and the housekeeping purge. Each service's `app.py` adds its own parts
on top and then starts the feed (after every subscriber subscribed) and the host.

    base = Foundation.lay(settings.service, purge=[idempotency.PURGE])
    directory = CachedDirectory(..., base.feed, ...)
    authenticator = base.authenticator(directory.exists)
    base.feed.start()
    ...
    await base.host.run(ready=base.db.ping)

Closers run last added first (ServiceHost.on_close): what a service adds later (clients, the
directory, publishers) closes before the pools and the feed laid here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis

from mesh.credentials import MeshTLS, TLSSetupError
from services.common import tracing
from services.common.cache import Cache
from services.common.changefeed import ChangeFeed
from services.common.db import Database
from services.common.logs import configure_logging
from services.common.pagination import use_page_token_keys
from services.common.purge import Purger, Target
from services.common.replicas import Watermarks
from services.common.server import ServiceHost
from services.common.settings import ServiceSettings, page_token_keys
from services.common.streams import streams_client
from services.common.tokens import (
    AccessTokenVerifier,
    Authenticator,
    CallerExists,
    KnownCallers,
    RevokedSessions,
    load_public_key,
)


@dataclass(frozen=True)
class Foundation:
    host: ServiceHost
    db: Database
    cache: Cache
    # One change feed per process, shared by every kept copy and the ended sessions.
    feed: ChangeFeed
    # Ended sessions (log-out), told by auth on the feed; checked with every token.
    revoked: RevokedSessions
    verifier: AccessTokenVerifier
    # This process's mesh identity (MESH_TLS_DIR): its port and its calls to Envoy use it. None
    # only with the explicit development switch MESH_PLAINTEXT=1 (mesh/credentials.py).
    tls: MeshTLS | None

    @classmethod
    def lay(cls, common: ServiceSettings, *, purge: Sequence[Target]) -> Foundation:
        # Before anything starts: a service without page-token keys must not start at all.
        use_page_token_keys(page_token_keys())
        configure_logging(common.log_level)
        # Before any server, channel, pool or Redis client exists: the instrumentations patch them.
        tracing.setup(common.name)
        try:
            tls = MeshTLS.from_env()
        except (TLSSetupError, OSError, ValueError) as exc:
            raise SystemExit(f"cannot load this instance's mesh certificate: {exc}") from None
        host = ServiceHost(common, tls=tls)
        # Closers run last added first: the spans of the whole shutdown are still exported.
        host.on_close(lambda: asyncio.to_thread(tracing.shutdown))
        cache = Cache(common.redis_url, common.cache_prefix)
        # Read-your-writes on the replicas: writes' WAL positions per user, in the service's Redis.
        watermarks = Watermarks(cache.client, common.cache_prefix, common.database.watermark_seconds)
        db = Database(common.database, watermarks)
        for name, job in db.background_jobs().items():
            host.add_background(name, job)
        feed = ChangeFeed(common.redis_url)
        revoked = RevokedSessions(feed, cache.client, common.mesh_prefix)
        host.on_close(db.close)
        host.on_close(cache.close)
        host.on_close(feed.close)
        host.on_close(revoked.close)
        if common.purge.enabled and purge:
            host.add_background("purge", Purger(db, purge, common.purge).run)
        verifier = AccessTokenVerifier(
            load_public_key(common.jwt_public_key_file), issuer=common.jwt_issuer, audience=common.jwt_audience
        )
        return cls(host, db, cache, feed, revoked, verifier, tls)

    @functools.cached_property
    def streams(self) -> redis.Redis:
        """The process's one client for its stream consumers (services/common/streams.py), made on
        first use and closed with the host: their XREADGROUPs block longer than the cache client's
        socket timeout allows."""
        client = streams_client(self.host.settings.redis_url, self.host.settings.consumers.block_ms)
        self.host.on_close(client.aclose)
        return client

    def authenticator(self, exists: CallerExists) -> Authenticator:
        """Refuses a token that is not valid, whose session ended, or whose account does not exist
        (`exists`: usually one look-up in the kept profiles)."""
        return Authenticator(self.verifier, self.revoked, KnownCallers(exists))
