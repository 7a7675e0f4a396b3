"""Disappearing letters (SPEC §13): how long a body lives after the first open, when it goes, when
it went; the body may now be erased (NULL); the index behind the eraser's sweep.

Revision ID: 0004_disappearing
Revises: 0003_replies_shares
Create Date: 2026-11-30
"""

from alembic import op

revision = "0004_disappearing"
down_revision = "0003_replies_shares"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # disappear_after_seconds: chosen at send time (the service validates SPEC §13's 60..86,400;
    # the constraint is only the backstop, wide enough for the test stack's lowered minimum).
    # disappears_at: opened_at + disappear_after_seconds, set by the first open.
    # disappeared_at: when the eraser set the body to NULL (the row stays).
    op.execute(
        """
        ALTER TABLE capsules
            ADD COLUMN disappear_after_seconds integer
                CHECK (disappear_after_seconds BETWEEN 1 AND 86400),
            ADD COLUMN disappears_at timestamptz,
            ADD COLUMN disappeared_at timestamptz,
            ALTER COLUMN body DROP NOT NULL,
            ADD CONSTRAINT capsules_body_erased_only_when_disappeared
                CHECK (body IS NOT NULL OR disappeared_at IS NOT NULL),
            ADD CONSTRAINT capsules_disappears_only_when_asked
                CHECK (disappears_at IS NULL OR disappear_after_seconds IS NOT NULL)
        """
    )
    # The eraser: bodies due to disappear and not erased yet, oldest due first. Small: only opened
    # disappearing letters whose body still exists are in it.
    op.execute(
        "CREATE INDEX capsules_disappear_idx ON capsules (disappears_at) "
        "WHERE disappears_at IS NOT NULL AND disappeared_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX capsules_disappear_idx")
    # Erased bodies cannot come back: they become empty strings once the column is NOT NULL again
    # (the 1..20,000 check is relaxed to allow them).
    op.execute(
        """
        ALTER TABLE capsules
            DROP CONSTRAINT capsules_disappears_only_when_asked,
            DROP CONSTRAINT capsules_body_erased_only_when_disappeared,
            DROP CONSTRAINT capsules_body_check,
            ADD CONSTRAINT capsules_body_check CHECK (length(body) <= 20000)
        """
    )
    op.execute("UPDATE capsules SET body = '' WHERE body IS NULL")
    op.execute(
        """
        ALTER TABLE capsules
            ALTER COLUMN body SET NOT NULL,
            DROP COLUMN disappeared_at,
            DROP COLUMN disappears_at,
            DROP COLUMN disappear_after_seconds
        """
    )
