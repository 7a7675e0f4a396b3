"""Replies to opened capsules (one per capsule) and countdown shares of sealed ones (SPEC §13).

Revision ID: 0003_replies_shares
Revises: 0002_self_letters
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003_replies_shares"
down_revision = "0002_self_letters"
branch_labels = None
depends_on = None

# The seven emoji of SPEC §13 in their canonical spelling (the list declared in replies.proto).
EMOJI = ("\u2764\ufe0f", "\U0001f979", "\U0001f60a", "\U0001f60e", "\U0001f622", "\U0001f90d", "\U0001f64f")


def upgrade() -> None:
    allowed = ", ".join(f"'{e}'" for e in EMOJI)
    op.execute(
        f"""
        CREATE TABLE capsule_replies (
            id         uuid PRIMARY KEY,
            capsule_id uuid NOT NULL REFERENCES capsules (id),
            author     uuid NOT NULL,
            text       text NOT NULL DEFAULT '' CHECK (char_length(text) <= 60),
            emoji      text NOT NULL CHECK (emoji IN ({allowed})),
            created_at timestamptz NOT NULL DEFAULT now(),
            -- Once per capsule: the backstop of the rule, and the index of the look-up by capsule.
            CONSTRAINT capsule_replies_capsule_key UNIQUE (capsule_id)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE capsule_shares (
            id          uuid PRIMARY KEY,
            capsule_id  uuid NOT NULL REFERENCES capsules (id),
            -- secrets.token_urlsafe(32): 43 characters; stored as issued (see shares.py).
            token       text NOT NULL CHECK (length(token) >= 32),
            kind        text NOT NULL CHECK (kind IN ('story', 'video', 'static', 'link')),
            -- The sender's display name when the share was made; NULL for an anonymous capsule.
            sender_name text CHECK (length(sender_name) <= 100),
            created_by  uuid NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            -- The public read and the revoke find a share by its token.
            CONSTRAINT capsule_shares_token_key UNIQUE (token)
        )
        """
    )
    # The live shares of one capsule (counted against the per-capsule cap).
    op.execute("CREATE INDEX capsule_shares_capsule_idx ON capsule_shares (capsule_id)")


def downgrade() -> None:
    op.execute("DROP TABLE capsule_shares")
    op.execute("DROP TABLE capsule_replies")
