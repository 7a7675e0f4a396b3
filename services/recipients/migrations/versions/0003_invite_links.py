"""Invite links (SPEC §13): one row per invite whose recipients' side is done, so that a claim the
capsules service resumes after a crash (RelationshipService.LinkInvitedUser called again) answers
the first result and changes nothing.

Revision ID: 0003_invite_links
Revises: 0002_thoughts
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003_invite_links"
down_revision = "0002_thoughts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE invite_links (
            -- The invite (the capsule's id: one invite per capsule). The primary key is both the
            -- look-up of a repeat and the backstop against two links of one invite.
            invite_id           uuid PRIMARY KEY,
            sender              uuid NOT NULL,
            claimer             uuid NOT NULL,
            -- The answer given: the sender's recipient linked to the claimer at link time.
            sender_recipient_id uuid NOT NULL,
            created_at          timestamptz NOT NULL DEFAULT now(),
            CHECK (sender <> claimer)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE invite_links")
