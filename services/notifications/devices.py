"""Device tokens (SPEC §14), as plain async code: a user registers the push tokens of their phones,
removes them, lists them. The sender job (push/sender.py) pushes to them.

Rules:
- a token has one owner at a time (the primary key). Registering a token again changes nothing;
  registering one that another user holds moves it to the caller (the phone changed hands) and
  drops what was still queued for its former owner, so no push of theirs reaches the new one;
- a caller removes only their own tokens: anyone else's is NOT_FOUND, like one that does not exist;
- tokens: APNs 64 hex characters; FCM 1 to 4,096 characters of the URL-safe set FCM uses (letters,
  digits, `-`, `_`, `:`, `.`). Anything else is INVALID_ARGUMENT naming `token` (or `platform`).

Registering locks the token's row (or inserts it; a concurrent first registration conflicts on
the primary key and is read again, locked), so two users registering one token end with one owner.
"""

from __future__ import annotations

import re
import uuid

from services.common.db import Database
from services.common.errors import FieldErrors, NotFound
from services.common.ids import new_id
from services.common.pagination import Page, page_after, page_size, take_page
from services.common.tokens import Caller
from services.notifications.push import storage
from services.notifications.push.storage import DeviceRow

LIST_NAME = "devices"
APNS_RE = re.compile(r"[0-9a-fA-F]{64}")
PLATFORMS = ("fcm", "apns")


def check_token(errors: FieldErrors, token: str, platform: str) -> None:
    """An APNs token's shape (RegisterDeviceRequest declares what every token must be)."""
    if platform == "apns" and not APNS_RE.fullmatch(token):
        errors.add("token", "an APNs token is 64 hexadecimal characters")


class Devices:
    def __init__(self, *, db: Database) -> None:
        self.db = db

    async def register(self, caller: Caller, token: str, platform: str) -> DeviceRow:
        assert platform in PLATFORMS  # required and one of the enum's: judged before the handler
        errors = FieldErrors()
        check_token(errors, token, platform)
        errors.raise_if_any()
        me = caller.user_id
        # APNs tokens are hex: one spelling, so the same phone is never two rows.
        token = token.lower() if platform == "apns" else token
        async with self.db.write(touching=(me,)) as conn:
            for _ in range(3):
                held = await storage.lock_device(conn, token)
                if held is None:
                    inserted = await storage.insert_device(conn, token, me, platform, new_id())
                    if inserted is not None:
                        return inserted
                    continue  # registered meanwhile by someone else: read it again, locked
                if held.user_id == me and held.platform == platform:
                    return held  # the same again: nothing changes
                if held.user_id != me:
                    await storage.drop_pending(conn, token)
                return await storage.move_device(conn, token, me, platform, new_id())
        raise RuntimeError("device registration kept conflicting")  # three concurrent first inserts

    async def unregister(self, caller: Caller, token: str) -> None:
        candidates = {token, token.lower()} if APNS_RE.fullmatch(token) else {token}
        async with self.db.write(touching=(caller.user_id,)) as conn:
            for candidate in candidates:
                if await storage.delete_own_device(conn, candidate, caller.user_id):
                    return
        raise NotFound("no such device", violations=[("token", "no such device")])

    async def list(self, caller: Caller, requested_size: int, token: str) -> Page[DeviceRow]:
        size = page_size(requested_size)
        (after,) = page_after(token, LIST_NAME, uuid.UUID, caller=caller.user_id) or (None,)
        rows = await self.db.read_may_lag(
            lambda conn: storage.list_devices(conn, caller.user_id, after=after, limit=size + 1),
            users=(caller.user_id,),
        )
        page, next_token = take_page(rows, size, LIST_NAME, _by_seq, caller=caller.user_id)
        return Page(page, next_token)


def _by_seq(row: DeviceRow) -> list[uuid.UUID]:
    return [row.seq]
