"""Wires the auth service together and serves it."""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

from capsule.auth.v1 import auth_pb2

from services.auth.accounts import Accounts
from services.auth.blocklist import BlockList, NobodyBlocked, RecipientsBlockList
from services.auth.deletion import PARTICIPANTS, AccountDeletions
from services.auth.handlers import AuthHandlers
from services.auth.login_limits import LoginLimits
from services.auth.passwords import Passwords
from services.auth.sessions import AccessTokenIssuer, SessionRevoker, load_private_key
from services.auth.settings import AuthSettings
from services.auth.storage import UserRecord, account_deletions_purge, refresh_tokens_purge
from services.common import events, idempotency, outbox
from services.common.changefeed import Publisher
from services.common.foundation import Foundation
from services.common.kept import KeptCopies
from services.common.people import profile_channel, publish_profile_change
from services.common.streams import GroupConsumer
from services.common.tokens import LEEWAY_SECONDS


async def serve() -> None:
    settings = AuthSettings.from_env()
    common = settings.service
    purge = [
        idempotency.PURGE,
        refresh_tokens_purge(settings.refresh_token_retention_seconds),
        account_deletions_purge(),
        outbox.purge_target(common.outbox),
    ]
    base = Foundation.lay(common, purge=purge)
    db, cache, host = base.db, base.cache, base.host
    passwords = Passwords(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    block_list: BlockList = (
        RecipientsBlockList(settings.recipients_target, base.tls) if settings.recipients_target else NobodyBlocked()
    )
    publisher = Publisher(cache.client)
    # Users kept in process memory, dropped by the profile changes any auth instance publishes.
    kept_users: KeptCopies[UserRecord] = KeptCopies(
        base.feed, profile_channel(common.mesh_prefix), "user_copy", ttl_seconds=settings.profile_cache_ttl_seconds
    )
    # An ended session's entry lives as long as any access token of it can: a lifetime (+ skew).
    revocation_keep = settings.access_token_ttl_seconds + LEEWAY_SECONDS
    base.feed.start()
    host.on_close(publisher.close)
    host.on_close(block_list.close)

    private_key = load_private_key(settings.jwt_private_key_file)
    issuer = AccessTokenIssuer(
        private_key,
        issuer=common.jwt_issuer,
        audience=common.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    accounts = Accounts(
        db=db,
        cache=cache,
        passwords=passwords,
        issuer=issuer,
        block_list=block_list,
        refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
        profile_ttl_seconds=settings.profile_cache_ttl_seconds,
        search_ttl_seconds=settings.search_cache_ttl_seconds,
        profile_changed=functools.partial(publish_profile_change, publisher, common.mesh_prefix),
        kept_users=kept_users,
        session_ended=SessionRevoker(cache.client, publisher, base.revoked, common.mesh_prefix, revocation_keep).revoke,
        login_limits=LoginLimits(cache.client, common.cache_prefix, settings.login_limits),
    )
    deletions = AccountDeletions(
        db=db,
        passwords=passwords,
        login_limits=accounts.login_limits,
        session_ended=accounts.session_ended,
        forget_profile=accounts.forget,
        session_window_seconds=revocation_keep,
        settle_seconds=settings.account_deletion_settle_seconds,
    )
    handlers = AuthHandlers(accounts, deletions, base.authenticator(accounts.exists))
    host.add_service(auth_pb2.DESCRIPTOR.services_by_name["AuthService"], handlers)
    # The account-deletion saga (deletion.py): its events leave by the outbox; auth follows it on
    # its own stream (the sessions step) and on each participant's (their reports).
    if common.outbox.relay_enabled:
        host.add_background("outbox-relay", outbox.Relay.for_service(db, cache.client, common).run)
    consumers = common.consumers
    if consumers.enabled:
        sources = [("own", common.name, deletions.handle_own)] + [
            (service, service, deletions.handle_reports) for service in PARTICIPANTS
        ]
        for name, producer, handle in sources:
            stream = events.events_stream(common.mesh_prefix, producer)
            consumer = GroupConsumer.of(base.streams, consumers, stream=stream, group=common.name, handle=handle)
            host.add_background(f"deletion-saga-{name}", consumer.run)
    host.add_background("deletion-monitor", deletions.monitor)
    logging.getLogger(__name__).info(
        "auth service configured", extra={"fields": {"block_list": type(block_list).__name__}}
    )
    await host.run(ready=db.ping)
