"""Token minting: Ed25519-signed access JWTs and opaque refresh tokens (stored only as hashes); ending
sessions (SessionRevoker)."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
import uuid
from pathlib import Path

import jwt
import redis.asyncio as redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.exceptions import RedisError

from services.common.changefeed import Publisher
from services.common.tokens import (
    ALGORITHM,
    RevokedSessions,
    key_id,
    revoked_session_key,
    revoked_sessions_channel,
)

log = logging.getLogger(__name__)

REFRESH_TOKEN_BYTES = 32
REFRESH_TOKEN_LENGTH = 43  # base64url of 32 bytes, unpadded


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path} is not an Ed25519 private key")
    return key


class AccessTokenIssuer:
    def __init__(self, private_key: Ed25519PrivateKey, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._key = private_key
        self._kid = key_id(private_key.public_key())
        self._issuer = issuer
        self._audience = audience
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: uuid.UUID, session_id: uuid.UUID) -> str:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "sid": str(session_id),  # the refresh family: lets a later issue revoke a session's tokens
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})


def new_refresh_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(REFRESH_TOKEN_BYTES)).rstrip(b"=").decode()


def refresh_token_hash(token: str) -> bytes:
    """Tokens are 256 random bits, so a plain SHA-256 suffices (no salt or slow hash needed)."""
    return hashlib.sha256(token.encode()).digest()


def looks_like_refresh_token(token: str) -> bool:
    return len(token) == REFRESH_TOKEN_LENGTH and all(c.isalnum() or c in "-_" for c in token)


class SessionRevoker:
    """Ends sessions for every service at once (SPEC §3): a Redis key per ended `sid`, kept as long
    as an access token of it can still be valid, then the `sid` announced on the mesh's channel
    (services.common.tokens.RevokedSessions is the reading side, and says what a message holds).

    Redis unreachable: the key is not written, and the announcement is retried (Publisher) — the
    refresh family is revoked in Postgres all the same, so no new access token comes out of the
    session, but the services that did not hear of it accept its current access token until it
    expires (≤ the access-token lifetime), as before sessions were revocable.
    """

    def __init__(
        self, client: redis.Redis, publisher: Publisher, revoked: RevokedSessions, mesh_prefix: str, keep_seconds: int
    ) -> None:
        self._client = client
        self._publisher = publisher
        self._revoked = revoked
        self._prefix = mesh_prefix
        self._keep = keep_seconds

    async def revoke(self, session_id: uuid.UUID) -> None:
        sid = str(session_id)
        until = f"{time.time() + self._keep:.0f}"
        self._revoked.add(sid, float(until))  # this instance refuses it at once
        try:
            await self._client.set(revoked_session_key(self._prefix, sid), until.encode(), ex=self._keep)
        except (RedisError, OSError) as exc:
            log.warning("session revocation not stored in Redis", extra={"fields": {"error": str(exc)}})
        await self._publisher.publish(revoked_sessions_channel(self._prefix), f"{sid} {until}".encode())
