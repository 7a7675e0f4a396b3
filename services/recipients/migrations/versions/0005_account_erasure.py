"""The indexes the account-deletion saga's erasure needs (services/recipients/erasure.py): every
row that names the account is found through an index, never a scan. CONCURRENTLY: these tables
are written all the time.

Revision ID: 0005_account_erasure
Revises: 0004_outbox
Create Date: 2026-11-30
"""

from services.common.migrations import create_indexes_concurrently, drop_indexes_concurrently

revision = "0005_account_erasure"
down_revision = "0004_outbox"
branch_labels = None
depends_on = None

INDEXES = {
    # Requests received in any state (the pending ones have connection_requests_incoming_idx).
    "connection_requests_to_user_idx": "connection_requests (to_user)",
    "recipients_linked_user_idx": "recipients (linked_user) WHERE linked_user IS NOT NULL",
    "invite_links_sender_idx": "invite_links (sender)",
    "invite_links_claimer_idx": "invite_links (claimer)",
}


def upgrade() -> None:
    create_indexes_concurrently(INDEXES)


def downgrade() -> None:
    drop_indexes_concurrently(INDEXES)
