"""Wires the recipients service together and serves it."""

from __future__ import annotations

import logging

from capsule.recipients.v1 import recipients_pb2, relationships_pb2

from services.common import idempotency
from services.common.cache import Cache
from services.common.changefeed import ChangeFeed
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
from services.recipients.address_book import AddressBook
from services.recipients.handlers import RecipientsHandlers, RelationshipHandlers
from services.recipients.relationships import Relationships
from services.recipients.settings import RecipientsSettings


async def serve() -> None:
    settings = RecipientsSettings.from_env()
    # Before anything starts: a service without page-token keys must not start at all.
    use_page_token_keys(page_token_keys())
    common = settings.service
    configure_logging(common.log_level)
    host = ServiceHost(common)

    db = Database(common.database)
    cache = Cache(common.redis_url, common.cache_prefix)
    feed = ChangeFeed(common.redis_url)  # auth's profile changes, for the connections' profiles
    directory = CachedDirectory(
        AuthDirectory(settings.auth_target, settings.auth_timeout_seconds), feed, common.mesh_prefix
    )
    # Ended sessions (log-out), told by auth on the same feed; checked with every token.
    revoked = RevokedSessions(feed, cache.client, common.mesh_prefix)
    feed.start()
    host.on_close(db.close)
    host.on_close(cache.close)
    host.on_close(directory.close)
    host.on_close(revoked.close)
    host.on_close(feed.close)
    if common.purge.enabled:
        host.add_background("purge", Purger(db, [idempotency.PURGE], common.purge).run)

    verifier = AccessTokenVerifier(
        load_public_key(common.jwt_public_key_file), issuer=common.jwt_issuer, audience=common.jwt_audience
    )
    # A caller is refused unless its account exists: one look-up in the kept profiles, usually.
    authenticator = Authenticator(verifier, revoked, KnownCallers(directory.exists))
    relationships = Relationships(
        db=db, cache=cache, directory=directory, ttl_seconds=settings.relationship_cache_ttl_seconds
    )
    host.add_service(
        recipients_pb2.DESCRIPTOR.services_by_name["RecipientsService"],
        RecipientsHandlers(relationships, AddressBook(db), authenticator),
    )
    host.add_service(
        relationships_pb2.DESCRIPTOR.services_by_name["RelationshipService"],
        RelationshipHandlers(relationships, authenticator),
    )
    logging.getLogger(__name__).info(
        "recipients service configured", extra={"fields": {"auth_target": settings.auth_target}}
    )
    await host.run(ready=db.ping)
