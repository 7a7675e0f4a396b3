"""Recipients: each user's address book (SPEC §5). Plain async code, no gRPC types.

Decisions: a recipient is visible to its owner only (anyone else: NOT_FOUND); `linked_user_id`,
when set on create or update, must be a current connection of the owner (FAILED_PRECONDITION
NOT_CONNECTED otherwise) — after that a removed connection leaves the recipient as it is; an empty
email or linked user clears it. Capsules are another service's: nothing here touches them.
"""

from __future__ import annotations

import uuid

import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common import validation
from services.common.db import Database, violated_constraint
from services.common.errors import AlreadyExists, FailedPrecondition, FieldErrors, NotFound
from services.common.ids import new_id
from services.common.pagination import Page, page_after, page_size, take_page
from services.common.tokens import Caller
from services.recipients import storage
from services.recipients.storage import RecipientRow


class AddressBook:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, caller: Caller, *, name: str, email: str, linked_user_id: str) -> RecipientRow:
        # Judged and normalized by CreateRecipientRequest's declared rules.
        address = email or None
        linked = validation.optional_id(linked_user_id, "linked_user_id")
        try:
            async with self.db.write(touching=(caller.user_id,)) as conn:
                if linked is not None:
                    await _require_connection(conn, caller.user_id, linked, "linked_user_id")
                return await storage.insert_recipient(
                    conn, id=new_id(), owner=caller.user_id, name=name, email=address, linked_user=linked
                )
        except sqlalchemy.exc.IntegrityError as exc:
            raise _uniqueness_error(exc, prefix="") from None

    async def get(self, caller: Caller, recipient_id: str) -> RecipientRow:
        rid = validation.resource_id(recipient_id)
        row = await self.db.read_may_lag(
            lambda conn: storage.recipient(conn, caller.user_id, rid), users=(caller.user_id,)
        )
        if row is None:
            raise _not_found()
        return row

    async def update(self, caller: Caller, recipient_id: str, values: dict[str, str], mask: list[str]) -> RecipientRow:
        rid = validation.resource_id(recipient_id)
        errors = FieldErrors()
        paths = mask or [field for field in storage.UPDATABLE_COLUMNS if values.get(field)]
        changes: dict[str, object] = {}
        linked: uuid.UUID | None = None
        for path in dict.fromkeys(paths):
            value = values.get(path, "")
            # The values were judged by the declared rules of Recipient's fields.
            if path == "name":
                changes["name"] = value
                errors.check(bool(value), "recipient.name", "is required")
            elif path == "email":
                changes["email"] = value or None
            elif path == "linked_user_id":
                linked = validation.optional_id(value, "recipient.linked_user_id")
                changes["linked_user"] = linked
            elif path in ("id", "created_at", "updated_at"):
                errors.add("update_mask", f"{path} is set by the service and cannot be changed")
            else:
                errors.add("update_mask", f"'{path}' is not a field of a recipient")
        errors.raise_if_any()
        try:
            async with self.db.write(touching=(caller.user_id,)) as conn:
                if not changes:
                    row = await storage.recipient(conn, caller.user_id, rid)
                else:
                    if linked is not None and await storage.recipient(conn, caller.user_id, rid) is not None:
                        await _require_connection(conn, caller.user_id, linked, "recipient.linked_user_id")
                    row = await storage.update_recipient(conn, caller.user_id, rid, changes)
        except sqlalchemy.exc.IntegrityError as exc:
            raise _uniqueness_error(exc, prefix="recipient.") from None
        if row is None:
            raise _not_found()
        return row

    async def delete(self, caller: Caller, recipient_id: str) -> None:
        rid = validation.resource_id(recipient_id)
        async with self.db.write(touching=(caller.user_id,)) as conn:
            deleted = await storage.delete_recipient(conn, caller.user_id, rid)
        if not deleted:
            raise _not_found()

    async def list(self, caller: Caller, *, query: str, requested_size: int, token: str) -> Page[RecipientRow]:
        # Whitespace collapsed, at most 100 characters: ListRecipientsRequest's declared rules.
        size = page_size(requested_size)
        name = "recipients:" + query.lower()
        after = page_after(token, name, str, uuid.UUID, caller=caller.user_id)
        rows = await self.db.read_may_lag(
            lambda conn: storage.list_recipients(conn, caller.user_id, prefix=query, after=after, limit=size + 1),
            users=(caller.user_id,),
        )
        return Page(*take_page(rows, size, name, lambda r: [r.sort_name, r.id], caller=caller.user_id))


async def _require_connection(conn: AsyncConnection, owner: uuid.UUID, other: uuid.UUID, field: str) -> None:
    if not await storage.connected(conn, owner, other):
        raise FailedPrecondition(
            "a recipient can only be linked to one of your connections",
            reason="NOT_CONNECTED",
            violations=[(field, "is not one of your connections")],
        )


def _not_found() -> NotFound:
    return NotFound("no recipient with this id")


def _uniqueness_error(exc: sqlalchemy.exc.IntegrityError, *, prefix: str) -> Exception:
    constraint = violated_constraint(exc)
    if constraint == "recipients_owner_email_key":
        return AlreadyExists(
            "a recipient with this email is already in your address book",
            reason="RECIPIENT_EMAIL_TAKEN",
            violations=[(f"{prefix}email", "is already in your address book")],
        )
    if constraint == "recipients_owner_linked_user_key":
        return AlreadyExists(
            "a recipient linked to this user is already in your address book",
            reason="RECIPIENT_LINKED_USER_TAKEN",
            violations=[(f"{prefix}linked_user_id", "is already in your address book")],
        )
    return exc
