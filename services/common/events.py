"""The events services tell each other about, on Redis streams: their names, their envelope, the
streams they travel on (SPEC §14). The one home of this contract: producers (through their
transactional outbox, services/common/outbox.py) and consumers (the notifications service) import
it from here.

Streams. Each producing service publishes on its own stream, `<CACHE_PREFIX><service>:events`
(`events_stream`); the capsules unlocker's announcements keep their stream and fields
(`<CACHE_PREFIX>capsules:ready`, services/capsules/unlocker.py: capsule_id, recipient_user, sender,
unlocks_at). The mesh shares one Redis for streams in the local stack; CACHE_PREFIX is the same
for every process, so every consumer derives every name.

Envelope (the fields of one stream entry, all strings):
- `id`: the event's UUID, given when the change is committed: what makes a consumer's insert
  idempotent (delivered twice, it is the same event);
- `type`: one of the TYPES below;
- `occurred_at`: when the change committed (RFC 3339, UTC);
- `data`: a JSON object, the type's fields (below), ids as strings.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

# type → the fields of its `data` (all UUIDs as strings).
CONNECTION_REQUEST_RECEIVED = "connection_request.received"  # request_id, from_user, to_user
CONNECTION_REQUEST_ACCEPTED = "connection_request.accepted"  # request_id, from_user, to_user
THOUGHT_RECEIVED = "thought.received"  # thought_id, sender, receiver
REPLY_RECEIVED = "reply.received"  # reply_id, capsule_id, author, capsule_sender
INVITE_CLAIMED = "invite.claimed"  # capsule_id, sender, claimer
# The account-deletion saga (services/auth/deletion.py says who does what):
# auth → every service: erase what belongs to the account, now (the first pass) ...
ACCOUNT_DELETED = "account.deleted"  # user_id, requested_at
# ... and again once every call that was in flight at the deletion has ended (the final pass: a
# write that passed its checks just before the deletion may commit after the first pass). A
# scheduled event: its occurred_at is the deletion's time plus the settle time (outbox.py).
ACCOUNT_DELETION_SETTLED = "account.deletion_settled"  # user_id, requested_at
# every service → auth: this service erased the account (pass "first" or "final").
ACCOUNT_ERASED = "account.erased"  # user_id, service, pass
TYPES = frozenset(
    {
        CONNECTION_REQUEST_RECEIVED,
        CONNECTION_REQUEST_ACCEPTED,
        THOUGHT_RECEIVED,
        REPLY_RECEIVED,
        INVITE_CLAIMED,
        ACCOUNT_DELETED,
        ACCOUNT_DELETION_SETTLED,
        ACCOUNT_ERASED,
    }
)


def events_stream(mesh_prefix: str, service: str) -> str:
    """The stream a service's outbox relay publishes on."""
    return f"{mesh_prefix}{service}:events"


def ready_stream(mesh_prefix: str) -> str:
    """The capsules unlocker's stream of ready capsules (its own fields, not the envelope)."""
    return f"{mesh_prefix}capsules:ready"


@dataclass(frozen=True, slots=True)
class Event:
    id: uuid.UUID
    type: str
    occurred_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        return {
            "id": str(self.id),
            "type": self.type,
            "occurred_at": self.occurred_at.isoformat(),
            "data": orjson.dumps(dict(self.data)).decode(),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> Event:
        """An entry read back (Redis answers bytes); ValueError/KeyError when it is not one."""
        text = {_str(k): _str(v) for k, v in fields.items()}
        data = orjson.loads(text["data"])
        if not isinstance(data, dict):
            raise ValueError("an event's data must be a JSON object")
        return cls(uuid.UUID(text["id"]), text["type"], datetime.fromisoformat(text["occurred_at"]), data)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
