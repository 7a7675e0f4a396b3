"""The tokens of public links (a countdown share's, an invite's): `secrets.token_urlsafe(32)`, 43
URL-safe characters (256 random bits), stored as issued with a unique index (shares.py and
invites.py say why not hashed). A token of another shape is none of ours: it is answered NOT_FOUND
without a query."""

from __future__ import annotations

import re
import secrets

TOKEN_BYTES = 32
# What secrets.token_urlsafe can produce (and a little room).
_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,100}")


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def well_formed(token: str) -> bool:
    return _SHAPE.fullmatch(token) is not None
