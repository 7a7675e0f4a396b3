"""Connection requests, connections, blocks, recipients, idempotency keys, and the indexes behind
every list and lookup of the recipients service.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

from services.common.migrations import create_idempotency_keys_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE connection_requests (
            id             uuid PRIMARY KEY,
            from_user      uuid NOT NULL,
            to_user        uuid NOT NULL,
            message        text NOT NULL DEFAULT '' CHECK (length(message) <= 500),
            status         text NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'accepted', 'declined', 'cancelled')),
            decline_reason text NOT NULL DEFAULT '' CHECK (length(decline_reason) <= 500),
            created_at     timestamptz NOT NULL DEFAULT now(),
            responded_at   timestamptz,
            CHECK (from_user <> to_user)
        )
        """
    )
    # One pending request per pair of users, whichever way it goes: the backstop of the rule.
    op.execute(
        "CREATE UNIQUE INDEX connection_requests_pending_pair_key ON connection_requests "
        "(least(from_user, to_user), greatest(from_user, to_user)) WHERE status = 'pending'"
    )
    # The incoming and outgoing lists (pending only), newest first by the time-ordered id.
    op.execute("CREATE INDEX connection_requests_incoming_idx ON connection_requests (to_user, id) WHERE status = 'pending'")
    op.execute(
        "CREATE INDEX connection_requests_outgoing_idx ON connection_requests (from_user, id) WHERE status = 'pending'"
    )
    # The 5-per-24 h count of a sender.
    op.execute("CREATE INDEX connection_requests_sender_time_idx ON connection_requests (from_user, created_at)")
    # The 7-day cool-down after a decline.
    op.execute(
        "CREATE INDEX connection_requests_declined_idx ON connection_requests (from_user, to_user, responded_at) "
        "WHERE status = 'declined'"
    )

    op.execute(
        """
        CREATE TABLE connections (
            id         uuid NOT NULL UNIQUE,
            user_low   uuid NOT NULL,
            user_high  uuid NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_low, user_high),
            CHECK (user_low < user_high)
        )
        """
    )
    # A user's connections are the rows where they are either end: one index per end, by id.
    op.execute("CREATE INDEX connections_low_list_idx ON connections (user_low, id)")
    op.execute("CREATE INDEX connections_high_list_idx ON connections (user_high, id)")

    op.execute(
        """
        CREATE TABLE blocks (
            id         uuid NOT NULL UNIQUE,
            blocker    uuid NOT NULL,
            blocked    uuid NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (blocker, blocked),
            CHECK (blocker <> blocked)
        )
        """
    )
    op.execute("CREATE INDEX blocks_list_idx ON blocks (blocker, id)")
    op.execute("CREATE INDEX blocks_blocked_idx ON blocks (blocked, blocker)")

    op.execute(
        """
        CREATE TABLE recipients (
            id          uuid PRIMARY KEY,
            owner       uuid NOT NULL,
            name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
            email       text CHECK (email IS NULL OR length(email) BETWEEN 3 AND 254),
            linked_user uuid,
            -- The list's sort key: byte order of the lower-case name, so the same index serves
            -- ORDER BY and LIKE 'prefix%'.
            sort_name   text COLLATE "C" GENERATED ALWAYS AS (lower(name)) STORED,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX recipients_owner_linked_user_key ON recipients (owner, linked_user) "
        "WHERE linked_user IS NOT NULL"
    )
    op.execute(
        "CREATE UNIQUE INDEX recipients_owner_email_key ON recipients (owner, lower(email)) WHERE email IS NOT NULL"
    )
    op.execute("CREATE INDEX recipients_owner_name_idx ON recipients (owner, sort_name, id)")

    # Retry-safe writes (SPEC §3): the table every service shares.
    create_idempotency_keys_table()


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP TABLE recipients")
    op.execute("DROP TABLE blocks")
    op.execute("DROP TABLE connections")
    op.execute("DROP TABLE connection_requests")
