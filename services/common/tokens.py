"""Access-token verification, done locally by every service with the auth service's public key.

Access tokens are Ed25519-signed JWTs (SPEC §3). A verified token is remembered until it expires,
so a client's repeated calls cost one dictionary look-up instead of a signature check each. A
valid signature is not enough: the token's session must not have ended (RevokedSessions, a set
look-up) and its account must exist (KnownCallers, a dictionary look-up once found); both are
checked on every call, after the verified-token cache (Authenticator).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import redis.asyncio as redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.common.background import cancel_and_wait
from services.common.changefeed import ChangeFeed
from services.common.errors import Unauthenticated

log = logging.getLogger(__name__)

REVOCATION_UNCHECKED = Counter(
    "session_revocation_unchecked_total",
    "Calls let through without a revocation check: the change feed was blind and Redis did not answer",
)

ALGORITHM = "EdDSA"
# Clock skew tolerated between the auth service that signs and the service that verifies.
LEEWAY_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user behind a call."""

    user_id: uuid.UUID
    session_id: str
    token: str  # forwarded as-is when this service calls another on the caller's behalf


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SystemExit(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a key (the JWT `kid`), so keys can be rotated."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class AccessTokenVerifier:
    def __init__(self, public_key: Ed25519PublicKey, *, issuer: str, audience: str, cache_size: int = 100_000) -> None:
        self._key = public_key
        self._issuer = issuer
        self._audience = audience
        self._cache: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str) -> Caller:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            caller, expires_at = hit
            if now < expires_at + LEEWAY_SECONDS:
                self._cache.move_to_end(token)
                return caller
            del self._cache[token]
            raise Unauthenticated("the access token has expired", reason="TOKEN_EXPIRED")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "iss", "aud", "sid"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the access token is not valid", reason="TOKEN_INVALID") from None
        try:
            user_id = uuid.UUID(claims["sub"])
        except (ValueError, TypeError):
            raise Unauthenticated("the access token is not valid", reason="TOKEN_INVALID") from None
        caller = Caller(user_id=user_id, session_id=str(claims["sid"]), token=token)
        self._cache[token] = (caller, float(claims["exp"]))
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return caller


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return str(value)
    return None


def revoked_sessions_channel(mesh_prefix: str) -> str:
    """The channel on which auth names sessions (`sid`) that ended (one per mesh)."""
    return f"{mesh_prefix}auth:session-revoked"


def revoked_session_key(mesh_prefix: str, session_id: str) -> str:
    return f"{mesh_prefix}auth:session-revoked:{session_id}"


class RevokedSessions:
    """The sessions that ended (log-out, a refresh token's reuse), as every service checks them.

    Auth writes a Redis key per ended session, whose value and TTL say until when an access token
    of it can still be valid (the revocation's time plus a token lifetime), then publishes
    `<sid> <until>` on the mesh's revocation channel. Each process keeps the revoked sids in memory
    until then, fed by its ChangeFeed, so the hot path is a set look-up after the feed's cheap
    catch-up (a revocation is seen by the next call anywhere, as profile changes are: changefeed.py).

    A revocation is never undone, so a copy that missed messages is incomplete, never wrong. After
    every (re)subscription the process reloads the keys from Redis (SCAN); until that reload has
    finished, and while the feed is blind, a sid not known here is looked up in Redis (one EXISTS).
    Redis down as well: the call is let through (fail open, counted in
    `session_revocation_unchecked_total`, Redis then skipped for a back-off): SPEC §10 wants calls
    to succeed with Redis down, and the token still expires within its lifetime (15 min); the sids
    already known here stay refused.
    """

    def __init__(
        self,
        feed: ChangeFeed,
        client: redis.Redis,
        mesh_prefix: str,
        *,
        backoff_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._feed = feed
        self._client = client
        self._prefix = mesh_prefix
        self._backoff = backoff_seconds
        self._clock = clock
        self._sids: dict[str, float] = {}  # sid -> until when its tokens could be valid (unix time)
        self._complete = False  # every revocation in Redis is in _sids (since the last subscription)
        self._down_until = 0.0
        self._reload: asyncio.Task[None] | None = None
        self._added = 0
        feed.subscribe(revoked_sessions_channel(mesh_prefix), self._revoked, self._resubscribed)

    def add(self, session_id: str, until: float) -> None:
        """A revocation (heard on the channel, or made by this very process)."""
        self._sids[session_id] = max(until, self._sids.get(session_id, 0.0))
        self._added += 1
        if self._added % 1024 == 0:  # now and then, forget the sessions whose tokens all expired
            now = self._clock()
            self._sids = {sid: t for sid, t in self._sids.items() if t > now}

    @property
    def complete(self) -> bool:
        """Whether the sids held here are every revocation in Redis (reloaded since the feed's
        last subscription): then a sid not held here is not revoked, without asking Redis."""
        return self._complete and self._feed.healthy

    async def is_revoked(self, session_id: str) -> bool:
        trusted = await self._feed.catch_up()
        if session_id in self._sids:
            return True  # (an entry outliving its `until` only matches tokens already expired)
        if trusted and self._complete:
            return False
        if time.monotonic() < self._down_until:
            REVOCATION_UNCHECKED.inc()
            return False
        try:
            return bool(await self._client.exists(revoked_session_key(self._prefix, session_id)))
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self._backoff
            REVOCATION_UNCHECKED.inc()
            log.warning("session revocation not checked", extra={"fields": {"error": str(exc)}})
            return False

    async def close(self) -> None:
        if self._reload is not None:
            await cancel_and_wait(self._reload)

    def _revoked(self, data: bytes) -> None:
        sid, _, until = data.decode("ascii", "replace").partition(" ")
        self.add(sid, _until(until, self._clock()))

    def _resubscribed(self) -> None:
        # Messages may have been missed: incomplete until the keys are read again. Called on a
        # loss as well (that reload fails or is cancelled, and the next subscription starts one).
        self._complete = False
        if self._reload is not None:
            self._reload.cancel()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to reload yet
            self._reload = asyncio.get_running_loop().create_task(self._load(self._feed.epoch))

    async def _load(self, epoch: int) -> None:
        found: dict[str, float] = {}
        try:
            batch: list[bytes] = []
            async for key in self._client.scan_iter(match=revoked_session_key(self._prefix, "*"), count=1000):
                batch.append(key if isinstance(key, bytes) else str(key).encode())
                if len(batch) >= 1000:
                    found.update(await self._values(batch))
                    batch = []
            found.update(await self._values(batch))
        except (RedisError, OSError) as exc:
            log.warning("revoked sessions not reloaded", extra={"fields": {"error": str(exc)}})
            return
        for sid, until in found.items():
            self.add(sid, until)
        # Keys written after the subscription was confirmed were announced on it as well: the set
        # is complete, unless the feed lost its subscription meanwhile.
        if self._feed.epoch == epoch and self._feed.healthy:
            self._complete = True

    async def _values(self, keys: list[bytes]) -> dict[str, float]:
        if not keys:
            return {}
        now = self._clock()
        values = await self._client.mget(keys)
        return {
            key.decode().rsplit(":", 1)[-1]: _until(value.decode() if isinstance(value, bytes) else str(value), now)
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }


def _until(text: str, now: float) -> float:
    try:
        return float(text)
    except ValueError:
        return now + 3600.0  # unreadable: remember it for longer than any access token lives


# Whether the account behind a caller exists (the services ask their directory of people).
CallerExists = Callable[["Caller"], Awaitable[bool]]


class KnownCallers:
    """Refuses a validly signed token whose account does not exist (SPEC §3), like an invalid one.

    An account found is remembered for `ttl_seconds` (by user id, in this process): the check is
    usually a dictionary look-up. Not finding an account is not remembered (it may be signing up
    right now). Deleting an account ends its sessions (RevokedSessions), which does not wait for
    this memory to expire.
    """

    def __init__(
        self,
        exists: CallerExists,
        *,
        ttl_seconds: float = 60.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._exists = exists
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._known: OrderedDict[uuid.UUID, float] = OrderedDict()

    async def check(self, caller: Caller) -> None:
        now = self._clock()
        until = self._known.get(caller.user_id)
        if until is not None and until > now:
            return
        if not await self._exists(caller):
            raise Unauthenticated("the account of this token no longer exists", reason="TOKEN_INVALID")
        self._known[caller.user_id] = now + self._ttl
        self._known.move_to_end(caller.user_id)
        if len(self._known) > self._max_entries:
            self._known.popitem(last=False)


class Authenticator:
    """Turns a call's `authorization` metadata into a Caller, or refuses it: a token that is not
    valid, whose session ended, or whose account does not exist."""

    def __init__(
        self,
        verifier: AccessTokenVerifier,
        revoked: RevokedSessions | None = None,
        known: KnownCallers | None = None,
    ) -> None:
        self._verifier = verifier
        self._revoked = revoked
        self._known = known

    async def require(self, context: grpc.aio.ServicerContext) -> Caller:
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated("this call needs an access token (authorization: Bearer …)")
        if not token:
            raise Unauthenticated("the authorization metadata must be 'Bearer <token>'", reason="TOKEN_INVALID")
        caller = self._verifier.verify(token)
        if self._revoked is not None and await self._revoked.is_revoked(caller.session_id):
            raise Unauthenticated("this session has ended (logged out); log in again", reason="SESSION_ENDED")
        if self._known is not None:
            await self._known.check(caller)
        return caller
