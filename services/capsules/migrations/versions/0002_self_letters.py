"""Self letters (SPEC §13): letters to one's future self, and the index behind their list.

Revision ID: 0002_self_letters
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

revision = "0002_self_letters"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The bounds of services/capsules/self_letters.py, repeated as constraints: the service checks
    # them first (every violation named at once), the table makes sure nothing else slips in. A
    # reflection needs an opening, and reflection and reflected_at are set together, once.
    op.execute(
        """
        CREATE TABLE self_letters (
            id           uuid PRIMARY KEY,
            author       uuid NOT NULL,
            title        text NOT NULL DEFAULT '' CHECK (length(title) <= 200),
            body         text NOT NULL CHECK (length(body) BETWEEN 20 AND 500),
            mood         text NOT NULL DEFAULT '' CHECK (length(mood) <= 32),
            life_area    text NOT NULL CHECK (life_area IN ('self', 'work', 'family', 'money', 'health')),
            city         text NOT NULL DEFAULT '' CHECK (length(city) <= 100),
            opens_at     timestamptz NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            opened_at    timestamptz,
            reflection   text CHECK (reflection IN ('yes', 'no', 'skipped')),
            reflected_at timestamptz,
            CHECK ((reflection IS NULL) = (reflected_at IS NULL)),
            CHECK (reflection IS NULL OR opened_at IS NOT NULL)
        )
        """
    )
    # The author's list, newest first: (author, id) read backwards (ids are UUIDv7, time-ordered).
    op.execute("CREATE INDEX self_letters_author_idx ON self_letters (author, id)")


def downgrade() -> None:
    op.execute("DROP TABLE self_letters")
