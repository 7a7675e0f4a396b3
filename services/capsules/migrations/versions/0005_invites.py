"""Invites (SPEC §13): a capsule may go to a recipient linked to no one yet; its invite, once
claimed, gives it a recipient user.

Revision ID: 0005_invites
Revises: 0004_disappearing
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005_invites"
down_revision = "0004_disappearing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL until the capsule's invite is claimed (services/capsules/invites.py).
    op.execute("ALTER TABLE capsules ALTER COLUMN recipient_user DROP NOT NULL")
    # The unlocker announces a capsule to its recipient: one waiting for its invite enters the
    # index once claimed, instead of being skipped by every batch until then.
    op.execute("DROP INDEX capsules_unlocker_idx")
    op.execute(
        "CREATE INDEX capsules_unlocker_idx ON capsules (unlocks_at) "
        "WHERE unlocked_event_at IS NULL AND deleted_at IS NULL AND recipient_user IS NOT NULL"
    )
    op.execute(
        """
        CREATE TABLE invites (
            -- One invite per capsule, reused when asked again.
            capsule_id       uuid PRIMARY KEY REFERENCES capsules (id),
            -- secrets.token_urlsafe(32): 43 URL-safe characters.
            token            text NOT NULL CHECK (length(token) >= 32),
            created_at       timestamptz NOT NULL DEFAULT now(),
            -- The claim, a saga over two services (invites.py): set when it begins (the first
            -- claimer wins here), completed once the recipients service linked the two users.
            claimer          uuid,
            claim_started_at timestamptz,
            -- The claimer's new recipient is named after the sender as they were when the claim
            -- began (a resumed claim has no token to ask the auth service with).
            sender_name      text CHECK (length(sender_name) <= 100),
            claimed_at       timestamptz,
            CHECK ((claimer IS NULL) = (claim_started_at IS NULL)),
            CHECK (claimed_at IS NULL OR claimer IS NOT NULL),
            -- The public read and the claim find an invite by its token.
            CONSTRAINT invites_token_key UNIQUE (token)
        )
        """
    )
    # The resumer: claims begun and never completed (a crash between the two services).
    op.execute(
        "CREATE INDEX invites_unfinished_idx ON invites (claim_started_at) "
        "WHERE claimer IS NOT NULL AND claimed_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP TABLE invites")
    op.execute("DROP INDEX capsules_unlocker_idx")
    op.execute(
        "CREATE INDEX capsules_unlocker_idx ON capsules (unlocks_at) "
        "WHERE unlocked_event_at IS NULL AND deleted_at IS NULL"
    )
    # Capsules still waiting for a claim have no recipient to keep: they go.
    op.execute("DELETE FROM capsules WHERE recipient_user IS NULL")
    op.execute("ALTER TABLE capsules ALTER COLUMN recipient_user SET NOT NULL")
