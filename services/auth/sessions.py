"""Token minting: Ed25519-signed access JWTs and opaque refresh tokens (stored only as hashes)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.tokens import ALGORITHM, key_id

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
