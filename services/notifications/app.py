"""Wires the notifications service together and serves it (with its stream consumers)."""

from __future__ import annotations

import logging

from capsule.notifications.v1 import devices_pb2, notifications_pb2

from services.common import events, outbox
from services.common.erasure import take_part
from services.common.foundation import Foundation
from services.common.people import AuthDirectory, CachedDirectory
from services.notifications.consumers import consumer, from_event, from_ready
from services.notifications.devices import Devices
from services.notifications.devices_handlers import DevicesHandlers
from services.notifications.erasure import NotificationsErasure
from services.notifications.handlers import NotificationsHandlers
from services.notifications.notifications import Notifications
from services.notifications.push.config import SenderSettings, providers_from_env
from services.notifications.push.sender import Sender
from services.notifications.settings import NotificationsSettings

# The producers whose outbox relays publish envelopes (events.events_stream).
PRODUCERS = ("recipients", "capsules")


async def serve() -> None:
    settings = NotificationsSettings.from_env()
    common = settings.service
    # No idempotency keys to purge (MarkRead is idempotent by nature): the outbox's published rows.
    base = Foundation.lay(common, purge=[outbox.purge_target(common.outbox)])
    # Whether a caller's account exists (SPEC §3: a deleted account's token is refused).
    directory = CachedDirectory(
        AuthDirectory(settings.auth_target, base.tls, settings.auth_timeout_seconds), base.feed, common.mesh_prefix
    )
    base.host.on_close(directory.close)
    base.feed.start()
    authenticator = base.authenticator(directory.exists)
    base.host.add_service(
        notifications_pb2.DESCRIPTOR.services_by_name["NotificationsService"],
        NotificationsHandlers(Notifications(db=base.db), authenticator),
    )
    base.host.add_service(
        devices_pb2.DESCRIPTOR.services_by_name["DevicesService"],
        DevicesHandlers(Devices(db=base.db), authenticator),
    )
    # Push delivery (push/sender.py): drains the queue the consumers fill with each new notification.
    push = SenderSettings.from_env()
    if push.enabled:
        sender = Sender(
            base.db,
            providers_from_env(),
            batch_size=push.batch_size,
            max_attempts=push.max_attempts,
            interval_seconds=push.interval_seconds,
            lease_seconds=push.lease_seconds,
            backoff_base_seconds=push.backoff_base_seconds,
            backoff_cap_seconds=push.backoff_cap_seconds,
        )
        base.host.add_background("push-sender", sender.run)
    consumers = common.consumers
    if consumers.enabled:
        sources = [("ready", events.ready_stream(common.mesh_prefix), from_ready)] + [
            (producer, events.events_stream(common.mesh_prefix, producer), from_event) for producer in PRODUCERS
        ]
        for name, stream, decode in sources:
            base.host.add_background(
                f"consumer-{name}", consumer(base.db, base.streams, consumers, stream=stream, decode=decode).run
            )
    # Its share of the account-deletion saga (erasure.py).
    take_part(base, NotificationsErasure(base.db).erase)
    if common.outbox.relay_enabled:
        # Publishes the saga's reports (account.erased) to auth.
        base.host.add_background("outbox-relay", outbox.Relay.for_service(base.db, base.cache.client, common).run)
    logging.getLogger(__name__).info(
        "notifications service configured",
        extra={"fields": {"auth_target": settings.auth_target, "consumer": consumers.name}},
    )
    await base.host.run(ready=base.db.ping)
