"""Retry-safe writes (SPEC §3): the same `idempotency-key` from the same caller within 24 h
returns the first result and writes nothing new.

Each service keeps an `idempotency_keys` table in its own database (created by its migrations:
operation, caller, key, request_hash, result_id, created_at; primary key (operation, caller, key)).
Inside the write's transaction the service first `claim`s the key: a second call with the same key
waits on the primary key until the first commits or rolls back, then sees what it did.

A key older than the window answers as if it were absent, so the housekeeping purge
(services/common/purge.py, `PURGE`) deletes exactly those rows: no answer changes, and the table
holds one day of keys instead of all of them (`idempotency_keys_created_idx` serves the scan).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import Aborted, FieldErrors
from services.common.purge import rows_where

KEY_MAX_LENGTH = 200
# SPEC §3: how long a key binds its caller to the first result.
WINDOW = "interval '24 hours'"

# A key older than the window is replaced as if it were absent (ON CONFLICT … WHERE).
_CLAIM = text(
    f"""
    INSERT INTO idempotency_keys (operation, caller, key, request_hash)
    VALUES (:operation, :caller, :key, :request_hash)
    ON CONFLICT (operation, caller, key) DO UPDATE
       SET request_hash = EXCLUDED.request_hash, result_id = NULL, created_at = now()
     WHERE idempotency_keys.created_at < now() - {WINDOW}
    RETURNING true
    """
)
# The rows the claim above already treats as absent.
PURGE = rows_where("idempotency_keys", f"created_at < now() - {WINDOW}")
_READ = text(
    "SELECT request_hash, result_id FROM idempotency_keys "
    "WHERE operation = :operation AND caller = :caller AND key = :key"
)
_RECORD = text(
    "UPDATE idempotency_keys SET result_id = :result_id "
    "WHERE operation = :operation AND caller = :caller AND key = :key"
)


@dataclass(frozen=True, slots=True)
class PriorRequest:
    """What the earlier call with the same key asked (a hash of its fields) and what it created."""

    request_hash: bytes
    result_id: uuid.UUID | None


def key_reused(what: str = "request") -> Aborted:
    """The answer to a key that came back with a different request (409)."""
    return Aborted(
        f"this Idempotency-Key was already used for a different {what}",
        reason="IDEMPOTENCY_KEY_REUSED",
        violations=[("idempotency_key", "use a new key for a new request")],
    )


def check_key(errors: FieldErrors, key: str | None) -> None:
    if key is not None and not 1 <= len(key) <= KEY_MAX_LENGTH:
        errors.add("idempotency_key", f"must be 1 to {KEY_MAX_LENGTH} characters")


async def claim(
    conn: AsyncConnection, *, operation: str, caller: str, key: str, request_hash: bytes
) -> PriorRequest | None:
    """None when this call owns the key now; else what the earlier call with this key did."""
    params = {"operation": operation, "caller": caller, "key": key}
    claimed = (await conn.execute(_CLAIM, {**params, "request_hash": request_hash})).first()
    if claimed is not None:
        return None
    row = (await conn.execute(_READ, params)).one()
    return PriorRequest(request_hash=bytes(row.request_hash), result_id=row.result_id)


async def record_result(conn: AsyncConnection, *, operation: str, caller: str, key: str, result_id: uuid.UUID) -> None:
    """Remember what the call that owns the key created, in the same transaction."""
    await conn.execute(_RECORD, {"operation": operation, "caller": caller, "key": key, "result_id": result_id})
