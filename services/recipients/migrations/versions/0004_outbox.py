"""The transactional outbox (SPEC §14): events committed with the writes that caused them, relayed
to the service's Redis stream (services/common/outbox.py, whose `create_table_sql` every service's
migration runs, so the tables cannot drift apart).

Revision ID: 0004_outbox
Revises: 0003_invite_links
Create Date: 2026-12-01
"""

from alembic import op

from services.common import outbox

revision = "0004_outbox"
down_revision = "0003_invite_links"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in outbox.create_table_sql():
        op.execute(statement)


def downgrade() -> None:
    for statement in outbox.drop_table_sql():
        op.execute(statement)
