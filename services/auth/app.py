"""Wires the auth service together and serves it."""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

from capsule.auth.v1 import auth_pb2

from services.auth.accounts import Accounts
from services.auth.blocklist import BlockList, NobodyBlocked, RecipientsBlockList
from services.auth.handlers import AuthHandlers
from services.auth.login_limits import LoginLimits
from services.auth.passwords import Passwords
from services.auth.sessions import AccessTokenIssuer, SessionRevoker, load_private_key
from services.auth.settings import AuthSettings
from services.auth.storage import UserRecord, refresh_tokens_purge
from services.common import idempotency
from services.common.cache import Cache
from services.common.changefeed import ChangeFeed, Publisher
from services.common.db import Database
from services.common.kept import KeptCopies
from services.common.logs import configure_logging
from services.common.pagination import use_page_token_keys
from services.common.people import profile_channel, publish_profile_change
from services.common.purge import Purger
from services.common.server import ServiceHost
from services.common.settings import page_token_keys
from services.common.tokens import (
    LEEWAY_SECONDS,
    AccessTokenVerifier,
    Authenticator,
    KnownCallers,
    RevokedSessions,
    load_public_key,
)


async def serve() -> None:
    settings = AuthSettings.from_env()
    # Before anything starts: a service without page-token keys must not start at all.
    use_page_token_keys(page_token_keys())
    common = settings.service
    configure_logging(common.log_level)
    host = ServiceHost(common)

    db = Database(common.database)
    cache = Cache(common.redis_url, common.cache_prefix)
    passwords = Passwords(
        time_cost=settings.argon2_time_cost,
        memory_kib=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )
    block_list: BlockList = (
        RecipientsBlockList(settings.recipients_target) if settings.recipients_target else NobodyBlocked()
    )
    publisher = Publisher(cache.client)
    # Users kept in process memory, dropped by the profile changes any auth instance publishes.
    feed = ChangeFeed(common.redis_url)
    kept_users: KeptCopies[UserRecord] = KeptCopies(
        feed, profile_channel(common.mesh_prefix), "user_copy", ttl_seconds=settings.profile_cache_ttl_seconds
    )
    # An ended session's entry lives as long as any access token of it can: a lifetime (+ skew).
    revocation_keep = settings.access_token_ttl_seconds + LEEWAY_SECONDS
    revoked = RevokedSessions(feed, cache.client, common.mesh_prefix)
    feed.start()
    host.on_close(revoked.close)
    host.on_close(feed.close)
    host.on_close(db.close)
    host.on_close(cache.close)
    host.on_close(publisher.close)
    host.on_close(block_list.close)

    private_key = load_private_key(settings.jwt_private_key_file)
    issuer = AccessTokenIssuer(
        private_key,
        issuer=common.jwt_issuer,
        audience=common.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    verifier = AccessTokenVerifier(
        load_public_key(common.jwt_public_key_file), issuer=common.jwt_issuer, audience=common.jwt_audience
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
        session_ended=SessionRevoker(cache.client, publisher, revoked, common.mesh_prefix, revocation_keep).revoke,
        login_limits=LoginLimits(cache.client, common.cache_prefix, settings.login_limits),
    )
    if common.purge.enabled:
        targets = [idempotency.PURGE, refresh_tokens_purge(settings.refresh_token_retention_seconds)]
        host.add_background("purge", Purger(db, targets, common.purge).run)
    handlers = AuthHandlers(accounts, Authenticator(verifier, revoked, KnownCallers(accounts.exists)))
    host.add_service(auth_pb2.DESCRIPTOR.services_by_name["AuthService"], handlers)
    logging.getLogger(__name__).info(
        "auth service configured", extra={"fields": {"block_list": type(block_list).__name__}}
    )
    await host.run(ready=db.ping)
