"""Devices and push deliveries (SPEC §14): each user's push tokens, and the durable queue of pushes
(one row per notification and device, inserted with the notification) that the sender job drains.

Revision ID: 0002_devices
Revises: 0001
Create Date: 2026-12-01
"""

from alembic import op

revision = "0002_devices"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE devices (
            -- The provider's token: one owner at a time (registering it again moves it).
            token           text PRIMARY KEY,
            user_id         uuid NOT NULL,
            platform        text NOT NULL CHECK (platform IN ('fcm', 'apns')),
            -- Time-ordered (UUIDv7) at registration: the list's order, newest first.
            seq             uuid NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            last_success_at timestamptz
        )
        """
    )
    # The list (newest first) and the fan-out of a new notification to the user's devices.
    op.execute("CREATE INDEX devices_user_idx ON devices (user_id, seq)")
    op.execute(
        """
        CREATE TABLE push_deliveries (
            notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
            -- A dead or unregistered token takes its deliveries with it.
            token           text NOT NULL REFERENCES devices (token) ON DELETE CASCADE,
            state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'given_up')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            created_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (notification_id, token)
        )
        """
    )
    # The sender's scan: the pending ones, soonest due first (and only those: delivered rows leave
    # the index).
    op.execute("CREATE INDEX push_deliveries_due_idx ON push_deliveries (next_attempt_at) WHERE state = 'pending'")
    # A device's deliveries: the ON DELETE CASCADE of a dropped token, and a token that changed
    # hands dropping what was pending for its former owner.
    op.execute("CREATE INDEX push_deliveries_token_idx ON push_deliveries (token)")


def downgrade() -> None:
    op.execute("DROP TABLE push_deliveries")
    op.execute("DROP TABLE devices")
