"""Users, refresh-token families, idempotency keys, and the indexes behind every hot query.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

from services.common.migrations import create_idempotency_keys_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(
        """
        CREATE TABLE users (
            id            uuid PRIMARY KEY,
            email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
            username      text NOT NULL CHECK (username ~ '^[a-z0-9_.]{3,30}$'),
            password_hash text NOT NULL,
            first_name    text NOT NULL DEFAULT '' CHECK (length(first_name) <= 100),
            last_name     text NOT NULL DEFAULT '' CHECK (length(last_name) <= 100),
            avatar_url    text NOT NULL DEFAULT '' CHECK (length(avatar_url) <= 2048),
            country       text NOT NULL DEFAULT '' CHECK (country ~ '^([A-Z]{2})?$'),
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # Unique regardless of case; also serves exact-email search and log-in by email.
    op.execute("CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email))")
    # Usernames are stored lower-case; text_pattern_ops serves both equality and LIKE 'prefix%'.
    op.execute("CREATE UNIQUE INDEX users_username_key ON users (username text_pattern_ops)")
    # Name search: prefix of first or last name, and fuzzy (trigram) on the full name.
    op.execute("CREATE INDEX users_first_name_prefix_idx ON users (lower(first_name) text_pattern_ops)")
    op.execute("CREATE INDEX users_last_name_prefix_idx ON users (lower(last_name) text_pattern_ops)")
    op.execute(
        "CREATE INDEX users_full_name_trgm_idx ON users "
        "USING gin ((lower(first_name || ' ' || last_name)) gin_trgm_ops)"
    )

    op.execute(
        """
        CREATE TABLE refresh_tokens (
            id          uuid PRIMARY KEY,
            family_id   uuid NOT NULL,
            user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            token_hash  bytea NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz NOT NULL,
            used_at     timestamptz,
            revoked_at  timestamptz
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX refresh_tokens_hash_key ON refresh_tokens (token_hash)")
    op.execute("CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id)")
    op.execute("CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id)")

    # Retry-safe writes (SPEC §3): the table every service shares.
    create_idempotency_keys_table()


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP TABLE refresh_tokens")
    op.execute("DROP TABLE users")
