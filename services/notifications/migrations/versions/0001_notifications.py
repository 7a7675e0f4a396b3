"""Notifications: one row per event that concerns a user, and the indexes behind the list, the
unread count and marking read.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE notifications (
            -- Time-ordered (UUIDv7) at insert: the list's order, newest first.
            id            uuid PRIMARY KEY,
            user_id       uuid NOT NULL,
            kind          text NOT NULL CHECK (kind IN (
                              'capsule_ready', 'connection_request_received', 'connection_request_accepted',
                              'reply_received', 'thought_received', 'invite_claimed')),
            -- The event it was made from (services/common/events.py's envelope id; for a capsule
            -- ready, a UUID derived from the capsule id): a second delivery of the same event
            -- inserts nothing (ON CONFLICT DO NOTHING).
            event_id      uuid NOT NULL CONSTRAINT notifications_event_key UNIQUE,
            capsule_id    uuid,
            request_id    uuid,
            reply_id      uuid,
            thought_id    uuid,
            other_user_id uuid,
            read          boolean NOT NULL DEFAULT false,
            created_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # One ready notification per capsule, whatever the event ids say.
    op.execute(
        "CREATE UNIQUE INDEX notifications_capsule_ready_key ON notifications (capsule_id) "
        "WHERE kind = 'capsule_ready'"
    )
    # The list, newest first by id.
    op.execute("CREATE INDEX notifications_user_idx ON notifications (user_id, id)")
    # The unread ones only: the unread count (index-only) and markRead upTo walk just these, and
    # a notification leaves this index once read, so it stays as small as what is unread.
    op.execute("CREATE INDEX notifications_unread_idx ON notifications (user_id, id) WHERE NOT read")


def downgrade() -> None:
    op.execute("DROP TABLE notifications")
