"""Account deletion (SPEC §14, services/auth/deletion.py): the outbox the saga's events leave by
(services/common/outbox.py), and the deletions on record — the saga's state, and the 30-day hold
on the account's username and email (kept as SHA-256 hashes: no personal data stays).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

from services.common import outbox

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in outbox.create_table_sql():
        op.execute(statement)
    op.execute(
        """
        CREATE TABLE account_deletions (
            user_id           uuid PRIMARY KEY,
            requested_at      timestamptz NOT NULL,
            -- SHA-256 of lower(email) and of the username: refused to sign-ups until names_free_at.
            email_hash        bytea NOT NULL CHECK (length(email_hash) = 32),
            username_hash     bytea NOT NULL CHECK (length(username_hash) = 32),
            names_free_at     timestamptz NOT NULL,
            -- The sessions (refresh families) whose access tokens may still be valid: ended
            -- everywhere at sessions_ended_at.
            sessions          uuid[] NOT NULL,
            sessions_ended_at timestamptz,
            -- The services that reported their first and final erasure (account.erased).
            erased_first      text[] NOT NULL DEFAULT '{}',
            erased_final      text[] NOT NULL DEFAULT '{}',
            completed_at      timestamptz,
            CHECK (completed_at IS NULL OR sessions_ended_at IS NOT NULL)
        )
        """
    )
    op.execute("CREATE INDEX account_deletions_email_idx ON account_deletions (email_hash)")
    op.execute("CREATE INDEX account_deletions_username_idx ON account_deletions (username_hash)")
    # The operators' gauges: deletions not completed, and the oldest of them.
    op.execute(
        "CREATE INDEX account_deletions_unfinished_idx ON account_deletions (requested_at) "
        "WHERE completed_at IS NULL"
    )
    # The purge, once the names are free again.
    op.execute("CREATE INDEX account_deletions_names_free_idx ON account_deletions (names_free_at)")


def downgrade() -> None:
    op.execute("DROP TABLE account_deletions")
    for statement in outbox.drop_table_sql():
        op.execute(statement)
