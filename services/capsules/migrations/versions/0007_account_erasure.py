"""The indexes the account-deletion saga's erasure needs (services/capsules/erasure.py): every row
that names the account is found through an index, never a scan. The letters an account deleted
itself (deleted_at set) are not in the inbox and outbox indexes: two small partial indexes cover
them. CONCURRENTLY: these tables are written all the time.

Revision ID: 0007_account_erasure
Revises: 0006_outbox
Create Date: 2026-11-30
"""

from services.common.migrations import create_indexes_concurrently, drop_indexes_concurrently

revision = "0007_account_erasure"
down_revision = "0006_outbox"
branch_labels = None
depends_on = None

INDEXES = {
    "capsules_deleted_sender_idx": "capsules (sender) WHERE deleted_at IS NOT NULL",
    "capsules_deleted_recipient_idx": "capsules (recipient_user) WHERE deleted_at IS NOT NULL",
    "capsule_shares_created_by_idx": "capsule_shares (created_by)",
    "invites_claimer_idx": "invites (claimer) WHERE claimer IS NOT NULL",
}


def upgrade() -> None:
    create_indexes_concurrently(INDEXES)


def downgrade() -> None:
    drop_indexes_concurrently(INDEXES)
