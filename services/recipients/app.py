"""Wires the recipients service together and serves it."""

from __future__ import annotations

import logging

from capsule.recipients.v1 import recipients_pb2, relationships_pb2, thoughts_pb2

from services.common import idempotency, outbox
from services.common.erasure import take_part
from services.common.foundation import Foundation
from services.common.people import AuthDirectory, CachedDirectory
from services.recipients.address_book import AddressBook
from services.recipients.erasure import RecipientsErasure
from services.recipients.handlers import RecipientsHandlers, RelationshipHandlers, ThoughtsHandlers
from services.recipients.invites import Invites
from services.recipients.relationships import Relationships
from services.recipients.settings import RecipientsSettings
from services.recipients.thoughts import Thoughts


async def serve() -> None:
    settings = RecipientsSettings.from_env()
    base = Foundation.lay(settings.service, purge=[idempotency.PURGE, outbox.purge_target(settings.service.outbox)])
    # The connections' profiles, dropped by auth's profile changes on the process's feed.
    directory = CachedDirectory(
        AuthDirectory(settings.auth_target, base.tls, settings.auth_timeout_seconds),
        base.feed,
        settings.service.mesh_prefix,
    )
    base.host.on_close(directory.close)
    base.feed.start()
    authenticator = base.authenticator(directory.exists)
    relationships = Relationships(
        db=base.db, cache=base.cache, directory=directory, ttl_seconds=settings.relationship_cache_ttl_seconds
    )
    base.host.add_service(
        recipients_pb2.DESCRIPTOR.services_by_name["RecipientsService"],
        RecipientsHandlers(relationships, AddressBook(base.db), authenticator),
    )
    base.host.add_service(
        relationships_pb2.DESCRIPTOR.services_by_name["RelationshipService"],
        RelationshipHandlers(relationships, authenticator, Invites(db=base.db, relationships=relationships)),
    )
    base.host.add_service(
        thoughts_pb2.DESCRIPTOR.services_by_name["ThoughtsService"],
        ThoughtsHandlers(Thoughts(db=base.db, directory=directory), authenticator),
    )
    # Its share of the account-deletion saga (erasure.py).
    take_part(base, RecipientsErasure(base.db, relationships).erase)
    if settings.service.outbox.relay_enabled:
        # Publishes the events committed in the outbox (requests, acceptances, thoughts).
        relay = outbox.Relay.for_service(base.db, base.cache.client, settings.service)
        base.host.add_background("outbox-relay", relay.run)
    logging.getLogger(__name__).info(
        "recipients service configured", extra={"fields": {"auth_target": settings.auth_target}}
    )
    await base.host.run(ready=base.db.ping)
