"""Wires the capsules service together and serves it (with its background unlocker)."""

from __future__ import annotations

import logging

from capsule.capsules.v1 import capsules_pb2

from services.capsules.capsules import Capsules
from services.capsules.handlers import CapsulesHandlers, ThemesHandlers
from services.capsules.neighbours import RecipientsClient
from services.capsules.pages import PageCopies
from services.capsules.settings import CapsulesSettings
from services.capsules.themes import Themes
from services.capsules.unlocker import Unlocker
from services.common import idempotency
from services.common.cache import Cache
from services.common.changefeed import ChangeFeed, Publisher
from services.common.db import Database
from services.common.logs import configure_logging
from services.common.pagination import use_page_token_keys
from services.common.people import AuthDirectory, CachedDirectory
from services.common.purge import Purger
from services.common.server import ServiceHost
from services.common.settings import page_token_keys
from services.common.tokens import (
    AccessTokenVerifier,
    Authenticator,
    KnownCallers,
    RevokedSessions,
    load_public_key,
)


async def serve() -> None:
    settings = CapsulesSettings.from_env()
    # Before anything starts: a service without page-token keys must not start at all.
    use_page_token_keys(page_token_keys())
    common = settings.service
    configure_logging(common.log_level)
    host = ServiceHost(common)

    db = Database(common.database)
    cache = Cache(common.redis_url, common.cache_prefix)
    # One change feed per process: auth's profile changes, and the pages other instances changed.
    feed = ChangeFeed(common.redis_url)
    publisher = Publisher(cache.client)
    directory = CachedDirectory(
        AuthDirectory(settings.auth_target, settings.call_timeout_seconds), feed, common.mesh_prefix
    )
    pages = PageCopies(feed, publisher, common.mesh_prefix, ttl_seconds=settings.capsule_cache_ttl_seconds)
    # Ended sessions (log-out), told by auth on the same feed; checked with every token.
    revoked = RevokedSessions(feed, cache.client, common.mesh_prefix)
    feed.start()
    recipients = RecipientsClient(settings.recipients_target, settings.call_timeout_seconds)

    verifier = AccessTokenVerifier(
        load_public_key(common.jwt_public_key_file), issuer=common.jwt_issuer, audience=common.jwt_audience
    )
    # A caller is refused unless its account exists: one look-up in the kept profiles, usually.
    authenticator = Authenticator(verifier, revoked, KnownCallers(directory.exists))
    capsules = Capsules(
        db=db,
        cache=cache,
        neighbours=recipients,
        directory=directory,
        pages=pages,
        min_unlock_lead_seconds=settings.min_unlock_lead_seconds,
        cache_ttl_seconds=settings.capsule_cache_ttl_seconds,
    )
    host.add_service(
        capsules_pb2.DESCRIPTOR.services_by_name["CapsulesService"], CapsulesHandlers(capsules, authenticator)
    )
    host.add_service(
        capsules_pb2.DESCRIPTOR.services_by_name["ThemesService"],
        ThemesHandlers(Themes(db, cache, settings.theme_cache_ttl_seconds)),
    )

    if settings.unlocker_enabled:
        unlocker = Unlocker(
            db,
            cache.client,
            stream=settings.ready_stream,
            batch_size=settings.unlocker_batch_size,
            interval_seconds=settings.unlocker_interval_seconds,
            marker_ttl_seconds=settings.ready_marker_ttl_seconds,
            stream_max_length=settings.ready_stream_max_length,
        )
        # Owned by the server's lifecycle: stopped before the closers below close its pools.
        host.add_background("unlocker", unlocker.run)
    if common.purge.enabled:
        host.add_background("purge", Purger(db, [idempotency.PURGE], common.purge).run)

    host.on_close(db.close)
    host.on_close(cache.close)
    host.on_close(directory.close)
    host.on_close(revoked.close)
    host.on_close(feed.close)
    host.on_close(publisher.close)
    host.on_close(recipients.close)
    logging.getLogger(__name__).info(
        "capsules service configured",
        extra={
            "fields": {
                "auth_target": settings.auth_target,
                "recipients_target": settings.recipients_target,
                "unlocker": settings.unlocker_enabled,
            }
        },
    )
    await host.run(ready=db.ping)
