"""Access-token verification, done locally by every service with the auth service's public key.

Access tokens are Ed25519-signed JWTs (SPEC §3). A verified token is remembered until it expires,
so a client's repeated calls cost one dictionary look-up instead of a signature check each.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.common.errors import Unauthenticated

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


class Authenticator:
    """Turns a call's `authorization` metadata into a Caller, or refuses it."""

    def __init__(self, verifier: AccessTokenVerifier) -> None:
        self._verifier = verifier

    def require(self, context: grpc.aio.ServicerContext) -> Caller:
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated("this call needs an access token (authorization: Bearer …)")
        if not token:
            raise Unauthenticated("the authorization metadata must be 'Bearer <token>'", reason="TOKEN_INVALID")
        return self._verifier.verify(token)
