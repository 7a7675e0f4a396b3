"""Thoughts (SPEC §13): one row per "thinking of you", and the indexes behind its rules and lists.

Revision ID: 0002_thoughts
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

revision = "0002_thoughts"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE thoughts (
            id         uuid PRIMARY KEY,
            sender     uuid NOT NULL,
            receiver   uuid NOT NULL,
            -- The UTC calendar day of created_at: the unit of both daily limits.
            utc_day    date NOT NULL,
            created_at timestamptz NOT NULL,
            CHECK (sender <> receiver),
            CHECK (utc_day = (created_at AT TIME ZONE 'UTC')::date),
            -- One thought per pair per UTC day: the backstop of the rule. Its column order also
            -- serves the sender's count of the day (sender, utc_day) and the pair look-up.
            CONSTRAINT thoughts_sender_day_receiver_key UNIQUE (sender, utc_day, receiver)
        )
        """
    )
    # The outgoing and incoming lists, newest first by the time-ordered id.
    op.execute("CREATE INDEX thoughts_outgoing_idx ON thoughts (sender, id)")
    op.execute("CREATE INDEX thoughts_incoming_idx ON thoughts (receiver, id)")


def downgrade() -> None:
    op.execute("DROP TABLE thoughts")
