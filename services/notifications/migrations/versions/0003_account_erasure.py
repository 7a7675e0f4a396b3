"""The account-deletion saga's part here (services/notifications/erasure.py): the outbox its
reports leave by (services/common/outbox.py), the accounts erased (so that no event consumed later
notifies one again), and the index that finds the notifications naming an erased account as the
other person.

Revision ID: 0003_account_erasure
Revises: 0002_devices
Create Date: 2026-11-30
"""

from alembic import op

from services.common import outbox
from services.common.migrations import create_indexes_concurrently, drop_indexes_concurrently

revision = "0003_account_erasure"
down_revision = "0002_devices"
branch_labels = None
depends_on = None

INDEXES = {"notifications_other_user_idx": "notifications (other_user_id) WHERE other_user_id IS NOT NULL"}


def upgrade() -> None:
    for statement in outbox.create_table_sql():
        op.execute(statement)
    # One row per deleted account, for good: a letter kept from a deleted account can be replied
    # to years later, and that event must not notify anyone. 24 bytes a row.
    op.execute(
        """
        CREATE TABLE erased_accounts (
            user_id   uuid PRIMARY KEY,
            erased_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # CONCURRENTLY: notifications is written by every consumer.
    create_indexes_concurrently(INDEXES)


def downgrade() -> None:
    drop_indexes_concurrently(INDEXES)
    op.execute("DROP TABLE erased_accounts")
    for statement in outbox.drop_table_sql():
        op.execute(statement)
