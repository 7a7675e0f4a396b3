"""The index behind the housekeeping purge of refresh tokens: each family's unused token (its
newest) by the time its session ended — the earlier of its expiry and its revocation (LEAST skips
a NULL revoked_at). Only one row per family is in it, so live sessions' histories are never walked.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CONCURRENTLY: refresh_tokens is written on every log-in and refresh; a plain CREATE INDEX
    # would block those writes for as long as the build takes on a large table. It cannot run in
    # a transaction, hence the autocommit block.
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_session_end_idx "
            "ON refresh_tokens (least(expires_at, revoked_at)) WHERE used_at IS NULL"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS refresh_tokens_session_end_idx")
