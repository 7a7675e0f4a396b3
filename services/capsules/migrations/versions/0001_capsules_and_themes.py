"""Themes (with the seeded catalog), capsules, idempotency keys, and the indexes behind the inbox,
the outbox and the unlocker.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

from services.common.migrations import create_idempotency_keys_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The catalog (SPEC §6): fixed ids so clients and tests can refer to them across environments.
THEMES = [
    ("01937a00-0000-7000-8000-000000000001", "Aurora", "Northern lights over a quiet night", "#1FA2FF", "#12D8FA", False),
    ("01937a00-0000-7000-8000-000000000002", "Birthday", "Candles, confetti and another year", "#FF758C", "#FF7EB3", False),
    ("01937a00-0000-7000-8000-000000000003", "Classic", "Plain paper, nothing in the way", "#F5F5F5", "#E0E0E0", False),
    ("01937a00-0000-7000-8000-000000000004", "Forest", "Moss, pines and morning fog", "#134E5E", "#71B280", False),
    ("01937a00-0000-7000-8000-000000000005", "Golden Hour", "The last warm light of the day", "#F7971E", "#FFD200", True),
    ("01937a00-0000-7000-8000-000000000006", "Graduation", "For the next chapter", "#141E30", "#243B55", False),
    ("01937a00-0000-7000-8000-000000000007", "Midnight", "Deep blue for late thoughts", "#0F2027", "#2C5364", True),
    ("01937a00-0000-7000-8000-000000000008", "Ocean", "Tides that always come back", "#2193B0", "#6DD5ED", False),
]


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE themes (
            id             uuid PRIMARY KEY,
            name           text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
            description    text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
            gradient_start text NOT NULL CHECK (gradient_start ~ '^#[0-9A-Fa-f]{6}$'),
            gradient_end   text NOT NULL CHECK (gradient_end ~ '^#[0-9A-Fa-f]{6}$'),
            premium        boolean NOT NULL DEFAULT false,
            created_at     timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # The catalog list, by name then id.
    op.execute("CREATE INDEX themes_list_idx ON themes (name, id)")
    for id_, name, description, start, end, premium in THEMES:
        op.execute(
            "INSERT INTO themes (id, name, description, gradient_start, gradient_end, premium) VALUES "
            f"('{id_}', '{name}', '{description}', '{start}', '{end}', {str(premium).lower()})"
        )

    op.execute(
        """
        CREATE TABLE capsules (
            id                   uuid PRIMARY KEY,
            sender               uuid NOT NULL,
            recipient_id         uuid NOT NULL,
            recipient_user       uuid NOT NULL,
            title                text NOT NULL DEFAULT '' CHECK (length(title) <= 200),
            body                 text NOT NULL CHECK (length(body) BETWEEN 1 AND 20000),
            theme_id             uuid REFERENCES themes (id),
            unlocks_at           timestamptz NOT NULL,
            anonymous            boolean NOT NULL DEFAULT false,
            reveal_delay_seconds integer NOT NULL DEFAULT 21600
                                 CHECK (reveal_delay_seconds BETWEEN 0 AND 259200),
            created_at           timestamptz NOT NULL DEFAULT now(),
            updated_at           timestamptz NOT NULL DEFAULT now(),
            opened_at            timestamptz,
            deleted_at           timestamptz,
            unlocked_event_at    timestamptz,
            CHECK (sender <> recipient_user)
        )
        """
    )
    # Inbox and outbox, by unlocks_at then id (the keyset of both lists and the summary's scan).
    op.execute(
        "CREATE INDEX capsules_inbox_idx ON capsules (recipient_user, unlocks_at, id) WHERE deleted_at IS NULL"
    )
    op.execute("CREATE INDEX capsules_outbox_idx ON capsules (sender, unlocks_at, id) WHERE deleted_at IS NULL")
    # The unlocker: due capsules whose "ready" event is not published yet.
    op.execute(
        "CREATE INDEX capsules_unlocker_idx ON capsules (unlocks_at) "
        "WHERE unlocked_event_at IS NULL AND deleted_at IS NULL"
    )

    # Retry-safe writes (SPEC §3): the table every service shares.
    create_idempotency_keys_table()


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP TABLE capsules")
    op.execute("DROP TABLE themes")
