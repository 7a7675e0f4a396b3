"""The capsules service's share of the account-deletion saga (SPEC §14; the participant's
protocol: services/common/erasure.py).

What goes, each letter with its replies, shares and invite:
- the account's sealed outgoing letters (sealed when the deletion was asked: `requested_at`), and
  those waiting for an invite nobody claimed yet (delivered to no one);
- its inbox (every letter to it) and the letters whose invite it claimed or was claiming;
- the letters it deleted or had deleted for it (kept only as deleted rows);
- the shares it made, and its self letters.
What stays: the letters it sent that were already delivered (ready or opened) — their sender
becomes people.DELETED_ACCOUNT (the recipients see "a deleted account", and nothing points at the
person any more), and the sender's name copied into their shares and invites is cleared.

Each statement takes at most a batch of rows (services.common.erasure.batched) through an index
(0007_account_erasure and earlier); after each batch the letters' cached copies and their owners'
kept pages are corrected (Capsules.erased)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, TextClause, text

from services.capsules.capsules import Capsules
from services.capsules.storage import CAPSULE_COLUMNS, CapsuleRow
from services.common.db import Database
from services.common.erasure import batched
from services.common.people import DELETED_ACCOUNT


def _delete_letters(doomed: str) -> TextClause:
    """Deletes a batch of the letters `doomed` selects, with what hangs off them, in one statement
    (the foreign keys are checked at its end, when the replies, shares and invites are gone)."""
    return text(
        f"WITH doomed AS (SELECT id FROM capsules WHERE {doomed} LIMIT :batch FOR UPDATE), "
        "replies AS (DELETE FROM capsule_replies WHERE capsule_id IN (SELECT id FROM doomed)), "
        "shares AS (DELETE FROM capsule_shares WHERE capsule_id IN (SELECT id FROM doomed)), "
        "invites AS (DELETE FROM invites WHERE capsule_id IN (SELECT id FROM doomed)) "
        f"DELETE FROM capsules WHERE id IN (SELECT id FROM doomed) RETURNING {CAPSULE_COLUMNS}"
    )


# capsules_outbox_idx (sender, unlocks_at, id) WHERE deleted_at IS NULL.
DELETE_SEALED_SENT = _delete_letters(
    "sender = :u AND deleted_at IS NULL AND (unlocks_at > :requested_at OR recipient_user IS NULL)"
)
# capsules_inbox_idx (recipient_user, unlocks_at, id) WHERE deleted_at IS NULL.
DELETE_INBOX = _delete_letters("recipient_user = :u AND deleted_at IS NULL")
# capsules_deleted_sender_idx / capsules_deleted_recipient_idx.
DELETE_DELETED = _delete_letters("(sender = :u OR recipient_user = :u) AND deleted_at IS NOT NULL")
# invites_claimer_idx: a claim it made that never completed (a completed one is in its inbox).
DELETE_CLAIMED = _delete_letters("id IN (SELECT capsule_id FROM invites WHERE claimer = :u)")
# capsule_shares_created_by_idx.
DELETE_SHARES = text(
    "DELETE FROM capsule_shares WHERE id IN (SELECT id FROM capsule_shares WHERE created_by = :u LIMIT :batch) "
    "RETURNING id"
)
# self_letters_author_idx (author, id).
DELETE_SELF_LETTERS = text(
    "DELETE FROM self_letters WHERE id IN (SELECT id FROM self_letters WHERE author = :u LIMIT :batch) RETURNING id"
)
# capsules_outbox_idx: what is left of its letters was delivered: kept, from "a deleted account".
KEEP_DELIVERED = text(
    "WITH kept AS (SELECT id FROM capsules WHERE sender = :u AND deleted_at IS NULL LIMIT :batch FOR UPDATE), "
    "shares AS (UPDATE capsule_shares SET sender_name = NULL WHERE capsule_id IN (SELECT id FROM kept) "
    "AND sender_name IS NOT NULL), "
    "invites AS (UPDATE invites SET sender_name = NULL WHERE capsule_id IN (SELECT id FROM kept) "
    "AND sender_name IS NOT NULL) "
    f"UPDATE capsules SET sender = :deleted, updated_at = now() WHERE id IN (SELECT id FROM kept) "
    f"RETURNING {CAPSULE_COLUMNS}"
)


class CapsulesErasure:
    def __init__(self, db: Database, capsules: Capsules) -> None:
        self.db = db
        self.capsules = capsules

    async def erase(self, user: uuid.UUID, requested_at: datetime) -> dict[str, int]:
        """Everything of `user` here, gone or kept from "a deleted account" (idempotent). The order
        matters: what goes is deleted before what is left of its letters is kept."""
        params = {"u": user, "requested_at": requested_at}

        async def gone(rows: Sequence[Row[Any]]) -> None:
            await self.capsules.erased([CapsuleRow(**row._mapping) for row in rows], deleted=True)

        async def kept(rows: Sequence[Row[Any]]) -> None:
            await self.capsules.erased([CapsuleRow(**row._mapping) for row in rows], deleted=False)

        counts = {
            "capsules_sealed_sent": await batched(self.db, DELETE_SEALED_SENT, params, after=gone),
            "capsules_inbox": await batched(self.db, DELETE_INBOX, params, after=gone),
            "capsules_deleted": await batched(self.db, DELETE_DELETED, params, after=gone),
            "capsules_claimed": await batched(self.db, DELETE_CLAIMED, params, after=gone),
            "capsule_shares": await batched(self.db, DELETE_SHARES, params),
            "self_letters": await batched(self.db, DELETE_SELF_LETTERS, params),
        }
        counts["capsules_kept"] = await batched(
            self.db, KEEP_DELIVERED, {**params, "deleted": DELETED_ACCOUNT}, after=kept
        )
        return counts
