"""The notifications service's share of the account-deletion saga (SPEC §14; the participant's
protocol: services/common/erasure.py): the account's notifications (with their pushes) and
devices go; other people's notifications that name it as the other person are unlinked.

The account is first written into `erased_accounts`, which the consumers' insert consults
(storage.INSERT): an event about it consumed after this commit — one committed before the
deletion and relayed late, or a reply to a letter it sent years ago — notifies no one. An insert
that raced the first pass is caught by the final pass.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text

from services.common.db import Database
from services.common.erasure import batched

REMEMBER = text("INSERT INTO erased_accounts (user_id) VALUES (:u) ON CONFLICT (user_id) DO NOTHING")
# notifications_user_idx (user_id, id); push_deliveries go with them (ON DELETE CASCADE).
DELETE_NOTIFICATIONS = text(
    "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications WHERE user_id = :u LIMIT :batch) RETURNING id"
)
# devices_user_idx (user_id, seq); their pending pushes go with them (ON DELETE CASCADE).
DELETE_DEVICES = text(
    "DELETE FROM devices WHERE token IN (SELECT token FROM devices WHERE user_id = :u LIMIT :batch) RETURNING token"
)
# notifications_other_user_idx.
UNLINK_OTHERS = text(
    "UPDATE notifications SET other_user_id = NULL WHERE id IN "
    "(SELECT id FROM notifications WHERE other_user_id = :u LIMIT :batch) RETURNING id"
)


class NotificationsErasure:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def erase(self, user: uuid.UUID, requested_at: datetime) -> dict[str, int]:
        params = {"u": user}
        async with self.db.write() as conn:
            await conn.execute(REMEMBER, params)
        return {
            "notifications": await batched(self.db, DELETE_NOTIFICATIONS, params),
            "devices": await batched(self.db, DELETE_DEVICES, params),
            "notifications_unlinked": await batched(self.db, UNLINK_OTHERS, params),
        }
