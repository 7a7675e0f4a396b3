"""Wires the capsules service together and serves it (with its background unlocker)."""

from __future__ import annotations

import logging

from capsule.capsules.v1 import capsules_pb2, invites_pb2, replies_pb2, self_letters_pb2, shares_pb2

from services.capsules.capsules import Capsules
from services.capsules.disappearing import Eraser
from services.capsules.erasure import CapsulesErasure
from services.capsules.handlers import CapsulesHandlers, ThemesHandlers
from services.capsules.invites import InviteResumer, Invites
from services.capsules.invites_handlers import InvitesHandlers
from services.capsules.neighbours import RecipientsClient
from services.capsules.pages import PageCopies
from services.capsules.replies import Replies
from services.capsules.replies_shares_handlers import RepliesHandlers, SharesHandlers
from services.capsules.self_letters import SelfLetters
from services.capsules.self_letters_handlers import SelfLettersHandlers
from services.capsules.settings import CapsulesSettings
from services.capsules.shares import Shares
from services.capsules.themes import Themes
from services.capsules.unlocker import Unlocker
from services.common import idempotency, outbox
from services.common.changefeed import Publisher
from services.common.erasure import take_part
from services.common.foundation import Foundation
from services.common.people import AuthDirectory, CachedDirectory


async def serve() -> None:
    settings = CapsulesSettings.from_env()
    common = settings.service
    base = Foundation.lay(common, purge=[idempotency.PURGE, outbox.purge_target(common.outbox)])
    db, cache = base.db, base.cache
    publisher = Publisher(cache.client)
    # On the process's feed: auth's profile changes, and the pages other instances changed.
    directory = CachedDirectory(
        AuthDirectory(settings.auth_target, base.tls, settings.call_timeout_seconds), base.feed, common.mesh_prefix
    )
    pages = PageCopies(base.feed, publisher, common.mesh_prefix, ttl_seconds=settings.capsule_cache_ttl_seconds)
    base.feed.start()
    recipients = RecipientsClient(settings.recipients_target, base.tls, settings.call_timeout_seconds)
    authenticator = base.authenticator(directory.exists)
    capsules = Capsules(
        db=db,
        cache=cache,
        neighbours=recipients,
        directory=directory,
        pages=pages,
        min_unlock_lead_seconds=settings.min_unlock_lead_seconds,
        min_disappear_seconds=settings.min_disappear_seconds,
        cache_ttl_seconds=settings.capsule_cache_ttl_seconds,
    )
    base.host.add_service(
        capsules_pb2.DESCRIPTOR.services_by_name["CapsulesService"], CapsulesHandlers(capsules, authenticator)
    )
    base.host.add_service(
        capsules_pb2.DESCRIPTOR.services_by_name["ThemesService"],
        ThemesHandlers(Themes(db, cache, settings.theme_cache_ttl_seconds)),
    )
    # Self letters (SPEC §13): the same minimum lead as a capsule's unlock time.
    base.host.add_service(
        self_letters_pb2.DESCRIPTOR.services_by_name["SelfLettersService"],
        SelfLettersHandlers(SelfLetters(db=db, min_lead_seconds=settings.min_unlock_lead_seconds), authenticator),
    )
    base.host.add_service(
        replies_pb2.DESCRIPTOR.services_by_name["RepliesService"],
        RepliesHandlers(Replies(db=db, neighbours=recipients), authenticator),
    )
    base.host.add_service(
        shares_pb2.DESCRIPTOR.services_by_name["SharesService"],
        SharesHandlers(Shares(db=db, neighbours=recipients, directory=directory), authenticator),
    )
    invites = Invites(
        db=db, capsules=capsules, neighbours=recipients, directory=directory, url_base=settings.invite_url_base
    )
    base.host.add_service(
        invites_pb2.DESCRIPTOR.services_by_name["InvitesService"], InvitesHandlers(invites, authenticator)
    )
    # Completes invite claims a crash cut short (invites.py): every serving instance runs it.
    resumer = InviteResumer(
        invites,
        db,
        resume_after_seconds=settings.invite_resume_after_seconds,
        interval_seconds=settings.invite_resume_interval_seconds,
    )
    base.host.add_background("invite-resumer", resumer.run)

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
        base.host.add_background("unlocker", unlocker.run)
    if common.outbox.relay_enabled:
        # Publishes the events committed in the outbox (replies, invite claims) on the stream.
        base.host.add_background("outbox-relay", outbox.Relay.for_service(db, cache.client, common).run)
    if settings.eraser_enabled:
        # Erases disappearing letters' bodies once due, then drops their cached copies.
        eraser = Eraser(
            db,
            forget=capsules.forget_bodies,
            batch_size=settings.eraser_batch_size,
            interval_seconds=settings.eraser_interval_seconds,
        )
        base.host.add_background("eraser", eraser.run)

    # Its share of the account-deletion saga (erasure.py).
    take_part(base, CapsulesErasure(db, capsules).erase)

    base.host.on_close(directory.close)
    base.host.on_close(publisher.close)
    base.host.on_close(recipients.close)
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
    await base.host.run(ready=db.ping)
