"""The recipients service's share of the account-deletion saga (SPEC §14; the participant's
protocol: services/common/erasure.py): the account's connections, connection requests (sent and
received), blocks (both ways), its recipients, thoughts (sent and received) and invite links go;
the recipients other people keep that link to it stay theirs, unlinked.

Each statement takes at most a batch of rows (services.common.erasure.batched) through an index
of migrations/versions/0005_account_erasure.py or an earlier one, so it never scans a table; the
relationship answers cached for the account's former connections and blocks are rewritten after
each batch (the pair is then neither connected nor blocked)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text

from services.common.db import Database
from services.common.erasure import batched
from services.recipients.relationships import Relationships

# connections_pkey (user_low, …) and connections_high_list_idx (user_high, id).
DELETE_CONNECTIONS = text(
    "DELETE FROM connections WHERE id IN (SELECT id FROM connections WHERE user_low = :u OR user_high = :u "
    "LIMIT :batch) RETURNING CASE WHEN user_low = :u THEN user_high ELSE user_low END AS other"
)
# blocks_pkey (blocker, …) and blocks_blocked_idx (blocked, blocker).
DELETE_BLOCKS = text(
    "DELETE FROM blocks WHERE id IN (SELECT id FROM blocks WHERE blocker = :u OR blocked = :u LIMIT :batch) "
    "RETURNING CASE WHEN blocker = :u THEN blocked ELSE blocker END AS other"
)
# connection_requests_sender_time_idx (from_user, …) and connection_requests_to_user_idx.
DELETE_REQUESTS = text(
    "DELETE FROM connection_requests WHERE id IN (SELECT id FROM connection_requests "
    "WHERE from_user = :u OR to_user = :u LIMIT :batch) RETURNING id"
)
# recipients_owner_name_idx (owner, …).
DELETE_RECIPIENTS = text(
    "DELETE FROM recipients WHERE id IN (SELECT id FROM recipients WHERE owner = :u LIMIT :batch) RETURNING id"
)
# recipients_linked_user_idx: other people's recipients that named the account.
UNLINK_RECIPIENTS = text(
    "UPDATE recipients SET linked_user = NULL, updated_at = now() WHERE id IN "
    "(SELECT id FROM recipients WHERE linked_user = :u LIMIT :batch) RETURNING id"
)
# thoughts_outgoing_idx (sender, id) and thoughts_incoming_idx (receiver, id).
DELETE_THOUGHTS = text(
    "DELETE FROM thoughts WHERE id IN (SELECT id FROM thoughts WHERE sender = :u OR receiver = :u LIMIT :batch) "
    "RETURNING id"
)
# invite_links_sender_idx and invite_links_claimer_idx.
DELETE_INVITE_LINKS = text(
    "DELETE FROM invite_links WHERE invite_id IN (SELECT invite_id FROM invite_links "
    "WHERE sender = :u OR claimer = :u LIMIT :batch) RETURNING invite_id"
)


class RecipientsErasure:
    def __init__(self, db: Database, relationships: Relationships) -> None:
        self.db = db
        self.relationships = relationships

    async def erase(self, user: uuid.UUID, requested_at: datetime) -> dict[str, int]:
        """Everything of `user` here, gone or unlinked (idempotent: a second run changes nothing)."""
        params = {"u": user}

        async def pairs_changed(rows: Sequence[Row[Any]]) -> None:
            for other in {row.other for row in rows}:
                await self.relationships.refresh_pair(user, other, block_lists=True)

        return {
            "connections": await batched(self.db, DELETE_CONNECTIONS, params, after=pairs_changed),
            "blocks": await batched(self.db, DELETE_BLOCKS, params, after=pairs_changed),
            "connection_requests": await batched(self.db, DELETE_REQUESTS, params),
            "recipients": await batched(self.db, DELETE_RECIPIENTS, params),
            "recipients_unlinked": await batched(self.db, UNLINK_RECIPIENTS, params),
            "thoughts": await batched(self.db, DELETE_THOUGHTS, params),
            "invite_links": await batched(self.db, DELETE_INVITE_LINKS, params),
        }
