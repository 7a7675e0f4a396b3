"""Capsules: sending, reading, editing, deleting, opening, the inbox and outbox, and the inbox
summary (SPEC §6). Plain async code, no gRPC types.

Decisions:
- One clock: the service's (`clock`, UTC). Status is derived from it at read time (sealed before
  unlocks_at, opened once opened_at is set, ready in between) and the same instant is passed to SQL
  for status filters, so correctness never waits for the unlocker.
- Who sees what: the sender sees their capsule fully; "the recipient" is the user the recipient was
  linked to at send time (recorded on the row): they see it without the body while sealed, and
  without the sender while it is anonymous and not yet revealed (revealed once opened_at +
  reveal_delay has passed). Anyone else, and everyone for a deleted capsule: NOT_FOUND.
- Create: fields first (every violation at once); a key that already has a capsule answers it
  (a retry is not refused because of what changed since); then the recipients service on the
  sender's behalf (recipient is theirs → its linked user → connected and not blocked), then one
  transaction: idempotency claim (decides concurrent first calls), theme exists, insert. A block
  answers exactly like "not connected" (FAILED_PRECONDITION NOT_CONNECTED): it is never revealed.
  Nothing is written on any refusal.
- Edit and delete: sender only (anyone else NOT_FOUND), only while sealed at the service's clock
  (FAILED_PRECONDITION CAPSULE_NOT_SEALED after); the row is locked so an edit cannot race the open.
- Open: recipient only, only when ready (FAILED_PRECONDITION CAPSULE_SEALED before); opened_at is
  set once (UPDATE … WHERE opened_at IS NULL), a second open returns the same capsule.
- Cache: a capsule's row 1 minute, the inbox summary 1 minute. Every send/edit/open/delete
  overwrites both after its commit (the fresh row, or a tombstone for a deleted capsule; the
  recipient's recount) rather than deleting them: readers only add entries (SET NX), so one that
  read the database just before the write cannot put the old value back. Sealed→ready changes with
  time and no write: the cached summary carries the earliest sealed unlocks_at and is recounted
  once that instant has passed, so it is never wrong, only recounted. Unfiltered inbox and outbox
  pages are kept in process memory for the same minute (pages.py); every write names the owners
  whose pages it changed, so no instance serves them after the write answered.
- Disappearing letters (SPEC §13, disappearing.py): the body is not shown to anyone once
  disappears_at has passed, decided in `view` from the clock like the rest, so no copy can show it;
  the eraser then erases it in Postgres and calls `forget_bodies`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.capsules import disappearing, rules, storage
from services.capsules.neighbours import Neighbours
from services.capsules.pages import PageCopies
from services.capsules.storage import CapsuleRow
from services.common import idempotency, validation
from services.common.cache import Cache
from services.common.db import Database
from services.common.errors import FailedPrecondition, FieldErrors, InvalidArgument, NotFound
from services.common.ids import new_id
from services.common.pagination import Page, page_after, page_size, take_page
from services.common.people import Directory, Profile
from services.common.tokens import Caller

CREATE_OPERATION = "capsule-create"
# Cached in place of a deleted capsule's row.
TOMBSTONE = b"-"
BOXES = ("inbox", "outbox")
STATUSES = ("sealed", "ready", "opened")


def utc_now() -> datetime:
    return datetime.now(UTC)


def status_at(row: CapsuleRow, now: datetime) -> str:
    if now < row.unlocks_at:
        return "sealed"
    return "opened" if row.opened_at is not None else "ready"


def sender_revealed(row: CapsuleRow, now: datetime) -> bool:
    if not row.anonymous:
        return True
    return row.opened_at is not None and row.opened_at + timedelta(seconds=row.reveal_delay_seconds) <= now


@dataclass(frozen=True, slots=True)
class CapsuleView:
    """A capsule as one caller may see it at one instant."""

    row: CapsuleRow
    status: str
    as_sender: bool
    sender_hidden: bool
    body_visible: bool
    sender_profile: Profile | None = None
    # A disappearing letter past its time: the body is gone for everyone (SPEC §13).
    disappeared: bool = False


@dataclass(frozen=True, slots=True)
class Summary:
    sealed: int
    ready: int
    opened: int
    total: int
    next_unlocks_at: datetime | None


def view(row: CapsuleRow, caller: uuid.UUID, now: datetime, profile: Profile | None = None) -> CapsuleView:
    status = status_at(row, now)
    gone = disappearing.gone(row, now)
    if row.sender == caller:
        return CapsuleView(row, status, as_sender=True, sender_hidden=False, body_visible=not gone, disappeared=gone)
    hidden = not sender_revealed(row, now)
    return CapsuleView(
        row,
        status,
        as_sender=False,
        sender_hidden=hidden,
        body_visible=status != "sealed" and not gone,
        sender_profile=None if hidden else profile,
        disappeared=gone,
    )


class Capsules:
    def __init__(
        self,
        *,
        db: Database,
        cache: Cache,
        neighbours: Neighbours,
        directory: Directory,
        pages: PageCopies,
        min_unlock_lead_seconds: int = 60,
        min_disappear_seconds: int = disappearing.MIN_SECONDS,
        cache_ttl_seconds: int = 60,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.db = db
        self.cache = cache
        self.neighbours = neighbours
        self.directory = directory
        self.pages = pages
        self.min_lead = min_unlock_lead_seconds
        self.min_disappear = min_disappear_seconds
        self.ttl = cache_ttl_seconds
        self.clock = clock

    # --- create -----------------------------------------------------------------------------------

    async def create(
        self,
        caller: Caller,
        *,
        recipient_id: str,
        title: str,
        body: str,
        theme_id: str,
        unlocks_at: datetime | None,
        anonymous: bool,
        reveal_delay_seconds: int | None,
        idempotency_key: str | None,
        disappear_after_open_seconds: int | None = None,
    ) -> CapsuleView:
        now = self.clock()
        errors = FieldErrors()
        # Lengths, formats and ranges were judged by CreateCapsuleRequest's declared rules; what
        # needs the clock or a setting is judged here.
        rid = validation.resource_id(recipient_id, "recipient_id")
        theme = validation.optional_id(theme_id, "theme_id")
        unlocks = rules.unlocks_at(errors, unlocks_at, now, self.min_lead)
        delay = rules.REVEAL_DELAY_DEFAULT if reveal_delay_seconds is None else reveal_delay_seconds
        disappear = disappearing.after_open_seconds(errors, disappear_after_open_seconds, self.min_disappear)
        idempotency.check_key(errors, idempotency_key)
        errors.raise_if_any()
        assert unlocks is not None

        # A retry of a create that succeeded returns its capsule whatever changed since (a block,
        # a removed connection): checked before asking the recipients service. The claim below
        # still decides races between concurrent first calls.
        hashed: list[object] = [str(rid), title, body, str(theme or ""), unlocks.isoformat(), anonymous, delay]
        if disappear is not None:
            hashed.append(disappear)  # only when set: keys recorded before the field kept their hash
        request_hash = hashlib.sha256(orjson.dumps(hashed)).digest()
        claim = {"operation": CREATE_OPERATION, "caller": str(caller.user_id), "key": idempotency_key or ""}
        if idempotency_key:
            async with self.db.read() as conn:
                earlier = await storage.idempotent_result(conn, **claim)
            if earlier is not None:
                return await self._replay(caller, earlier, request_hash)

        recipient = await self.neighbours.recipient(caller, rid)
        if not recipient.found:
            raise NotFound(
                "no recipient with this id in your address book",
                violations=[("recipient_id", "is not one of your recipients")],
            )
        # A recipient linked to no one (SPEC §13: someone not on the app yet) gets the capsule once
        # they claim its invite (invites.py); until then it is in no inbox and no one is checked.
        linked = recipient.linked_user
        if linked is not None:
            relationship = await self.neighbours.relationship(caller, linked)
            if not relationship.connected or relationship.blocked:
                raise FailedPrecondition(
                    "capsules can only be sent to your connections",
                    reason="NOT_CONNECTED",
                    violations=[("recipient_id", "is not linked to one of your connections")],
                )

        async with self.db.write(touching=_present(caller.user_id, linked)) as conn:
            prior = None
            if idempotency_key:
                prior = await idempotency.claim(conn, **claim, request_hash=request_hash)
            if prior is None:
                if theme is not None and not await storage.theme_exists(conn, theme):
                    raise InvalidArgument(
                        "the request has invalid fields: theme_id",
                        violations=[("theme_id", "is not a theme of the catalog")],
                    )
                row = await storage.insert_capsule(
                    conn,
                    id=new_id(),
                    sender=caller.user_id,
                    recipient_id=rid,
                    recipient_user=linked,
                    title=title,
                    body=body,
                    theme_id=theme,
                    unlocks_at=unlocks,
                    anonymous=anonymous,
                    reveal_delay_seconds=delay,
                    disappear_after_seconds=disappear,
                )
                if idempotency_key:
                    await idempotency.record_result(conn, **claim, result_id=row.id)
        if prior is not None:
            return await self._replay(caller, prior, request_hash)
        await self.changed(row)
        return view(row, caller.user_id, self.clock())

    async def _replay(self, caller: Caller, prior: idempotency.PriorRequest, request_hash: bytes) -> CapsuleView:
        if prior.request_hash != request_hash or prior.result_id is None:
            raise idempotency.key_reused()
        async with self.db.read() as conn:
            first = await storage.capsule(conn, prior.result_id)
        if first is None or first.sender != caller.user_id:
            raise NotFound("the capsule this Idempotency-Key created no longer exists")
        return view(first, caller.user_id, self.clock())

    # --- read -------------------------------------------------------------------------------------

    async def get(self, caller: Caller, capsule_id: str) -> CapsuleView:
        cid = validation.resource_id(capsule_id)
        row = await self._cached_row(cid)
        if row is None or caller.user_id not in (row.sender, row.recipient_user):
            raise _not_found()
        now = self.clock()
        seen = view(row, caller.user_id, now)
        if not seen.as_sender and not seen.sender_hidden:
            profiles = await self.directory.profiles(caller, [row.sender])
            seen = view(row, caller.user_id, now, profiles.get(row.sender))
        return seen

    async def list_box(
        self, caller: Caller, *, box: str, status: str, requested_size: int, token: str
    ) -> Page[CapsuleView]:
        assert box in BOXES and status in ("", *STATUSES)
        size = page_size(requested_size)
        name = f"capsules:{box}:{status}"
        after = page_after(token, name, datetime, uuid.UUID, caller=caller.user_id)
        now = self.clock()
        read = await self._page(caller.user_id, box, status, now, after, size + 1)
        rows, next_token = take_page(read, size, name, lambda r: [r.unlocks_at, r.id], caller=caller.user_id)
        profiles: dict[uuid.UUID, Profile] = {}
        if box == "inbox":
            # One batched look-up per page, for the senders the caller may see.
            visible = [r.sender for r in rows if r.sender != caller.user_id and sender_revealed(r, now)]
            profiles = await self.directory.profiles(caller, visible) if visible else {}
        return Page([view(r, caller.user_id, now, profiles.get(r.sender)) for r in rows], next_token)

    async def _page(
        self,
        owner: uuid.UUID,
        box: str,
        status: str,
        now: datetime,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> Sequence[CapsuleRow]:
        """The rows of a page: kept in this process when unfiltered (pages.py), else from Postgres."""
        key = (owner, box, limit, after) if not status else None
        if key is not None and (kept := await self.pages.get(key)) is not None:
            return kept
        mark = self.pages.mark()
        rows = await self.db.driver_read_may_lag(
            lambda conn: storage.list_capsules(conn, owner, box=box, status=status, now=now, after=after, limit=limit),
            users=(owner,),
        )
        if key is not None:
            self.pages.keep(key, rows, mark)
        return rows

    async def summary(self, caller: Caller) -> Summary:
        key = self.cache.key("summary", str(caller.user_id))
        now = self.clock()

        async def load() -> bytes:
            return await self._count_inbox(caller.user_id, now)

        raw = await self.cache.get_or_load("capsule_summary", key, self.ttl, load)
        assert raw is not None
        data = orjson.loads(raw)
        if data["next"] is not None and datetime.fromisoformat(data["next"]) <= now:
            # A sealed capsule became ready since this was counted: recount and replace.
            fresh = await load()
            await self.cache.put(key, fresh, self.ttl)
            data = orjson.loads(fresh)
        next_unlocks = datetime.fromisoformat(data["next"]) if data["next"] else None
        sealed, opened, total = int(data["sealed"]), int(data["opened"]), int(data["total"])
        return Summary(sealed, total - sealed - opened, opened, total, next_unlocks)

    async def _count_inbox(self, user: uuid.UUID, now: datetime) -> bytes:
        counted = await self.db.read_may_lag(lambda conn: storage.inbox_summary(conn, user, now), users=(user,))
        return orjson.dumps(
            {
                "sealed": counted.sealed,
                "opened": counted.opened,
                "total": counted.total,
                "next": counted.next_unlocks_at.isoformat() if counted.next_unlocks_at else None,
            }
        )

    # --- writes by the sender ---------------------------------------------------------------------

    async def update(self, caller: Caller, capsule_id: str, values: dict[str, Any], mask: list[str]) -> CapsuleView:
        cid = validation.resource_id(capsule_id)
        now = self.clock()
        errors = FieldErrors()
        paths = mask or [field for field in storage.UPDATABLE_COLUMNS if values.get(field)]
        changes: dict[str, object] = {}
        for path in dict.fromkeys(paths):
            value = values.get(path)
            # The values were judged by the declared rules of Capsule's fields.
            if path == "title":
                changes["title"] = value or ""
            elif path == "body":
                body = value or ""
                errors.check(bool(body.strip()), "capsule.body", "is required")
                changes["body"] = body
            elif path == "theme_id":
                changes["theme_id"] = validation.optional_id(value or "", "capsule.theme_id")
            elif path == "unlocks_at":
                changes["unlocks_at"] = rules.unlocks_at(errors, value, now, self.min_lead, "capsule.unlocks_at")
            elif path in ("anonymous", "reveal_delay_seconds", "recipient_id", disappearing.FIELD):
                errors.add("update_mask", f"{path} cannot be changed after sending")
            elif path in (
                "id",
                "sender_id",
                "sender",
                "recipient_user_id",
                "status",
                "sender_hidden",
                "created_at",
                "updated_at",
                "opened_at",
                "disappears_at",
                "disappeared",
            ):
                errors.add("update_mask", f"{path} is set by the service and cannot be changed")
            else:
                errors.add("update_mask", f"'{path}' is not a field of a capsule")
        errors.raise_if_any()
        touched = {caller.user_id}
        async with self.db.write(touching=touched) as conn:
            row = await storage.capsule(conn, cid, for_update=True)
            if row is None or row.sender != caller.user_id:
                raise _not_found()
            touched.update(_present(row.recipient_user))
            _require_sealed(row, now, "edited")
            theme = changes.get("theme_id")
            if isinstance(theme, uuid.UUID) and not await storage.theme_exists(conn, theme):
                raise InvalidArgument(
                    "the request has invalid fields: capsule.theme_id",
                    violations=[("capsule.theme_id", "is not a theme of the catalog")],
                )
            if changes:
                row = await storage.update_capsule(conn, cid, changes, now)
        if changes:
            await self._stored(row)
        return view(row, caller.user_id, self.clock())

    async def delete(self, caller: Caller, capsule_id: str) -> None:
        cid = validation.resource_id(capsule_id)
        now = self.clock()
        touched = {caller.user_id}
        async with self.db.write(touching=touched) as conn:
            row = await storage.capsule(conn, cid, for_update=True)
            if row is None or row.sender != caller.user_id:
                raise _not_found()
            touched.update(_present(row.recipient_user))
            _require_sealed(row, now, "deleted")
            await storage.soft_delete(conn, cid, now)
        await self._stored(row, deleted=True)

    # --- open by the recipient --------------------------------------------------------------------

    async def open(self, caller: Caller, capsule_id: str) -> CapsuleView:
        cid = validation.resource_id(capsule_id)
        now = self.clock()
        touched = {caller.user_id}
        async with self.db.write(touching=touched) as conn:
            row = await storage.capsule(conn, cid, for_update=True)
            if row is None or row.recipient_user != caller.user_id:
                raise _not_found()
            touched.add(row.sender)
            if now < row.unlocks_at:
                raise FailedPrecondition(
                    "this capsule is still sealed",
                    reason="CAPSULE_SEALED",
                    metadata={"unlocks_at": row.unlocks_at.isoformat()},
                )
            opened = await storage.mark_opened(conn, cid, now) if row.opened_at is None else None
        if opened is not None:
            row = opened
            await self._stored(row)
        seen = view(row, caller.user_id, now)
        if not seen.sender_hidden:
            profiles = await self.directory.profiles(caller, [row.sender])
            seen = view(row, caller.user_id, now, profiles.get(row.sender))
        return seen

    # --- cache ------------------------------------------------------------------------------------

    async def _cached_row(self, cid: uuid.UUID) -> CapsuleRow | None:
        async def load() -> bytes | None:
            async with self.db.read() as conn:
                row = await storage.capsule(conn, cid)
            return _encode_row(row) if row else None

        raw = await self.cache.get_or_load("capsule", self.cache.key("capsule", str(cid)), self.ttl, load)
        return _decode_row(raw) if raw and raw != TOMBSTONE else None

    async def _stored(self, row: CapsuleRow, *, deleted: bool = False) -> None:
        """After a committed write: the capsule's fresh row (or a tombstone) and its recipient's
        fresh summary overwrite the cache. Writers overwrite and readers only add (SET NX), so a
        reader that loaded the old row just before the write cannot bring it back."""
        key = self.cache.key("capsule", str(row.id))
        await self.cache.put(key, TOMBSTONE if deleted else _encode_row(row), self.ttl)
        await self.changed(row)

    async def delivered(self, row: CapsuleRow) -> None:
        """After an invite's claim gave the capsule its recipient user (invites.py): the fresh row
        in the cache, the claimer's inbox and summary refreshed."""
        await self._stored(row)

    async def changed(self, row: CapsuleRow) -> None:
        """The kept inbox/outbox pages of the capsule's two parties dropped everywhere, and the
        recipient's summary refreshed (no recipient yet: a capsule waiting for its invite)."""
        if row.recipient_user is None:
            await self.pages.changed((row.sender, "outbox"))
            return
        await self.pages.changed((row.recipient_user, "inbox"), (row.sender, "outbox"))
        await self._refresh_summary(row.recipient_user)

    async def erased(self, rows: Sequence[CapsuleRow], *, deleted: bool) -> None:
        """After an account erasure's batch (erasure.py): the letters' cached copies become their
        committed state (gone, or kept from "a deleted account") and their owners' pages drop."""
        for row in rows:
            await self._stored(row, deleted=deleted)

    async def forget_bodies(self, erased: Sequence[CapsuleRow]) -> None:
        """After the eraser's commit: the erased rows overwrite their cached copies and their owners'
        kept pages are dropped on every instance (the counts of the summary did not change)."""
        for row in erased:
            await self.cache.put(self.cache.key("capsule", str(row.id)), _encode_row(row), self.ttl)
        await self.pages.changed(
            *((row.recipient_user, "inbox") for row in erased if row.recipient_user is not None),
            *((row.sender, "outbox") for row in erased),
        )

    async def _refresh_summary(self, user: uuid.UUID) -> None:
        await self.cache.put(
            self.cache.key("summary", str(user)), await self._count_inbox(user, self.clock()), self.ttl
        )


def _require_sealed(row: CapsuleRow, now: datetime, action: str) -> None:
    if now >= row.unlocks_at:
        raise FailedPrecondition(f"a capsule can only be {action} while it is sealed", reason="CAPSULE_NOT_SEALED")


def _not_found() -> NotFound:
    return NotFound("no capsule with this id")


def _present(*users: uuid.UUID | None) -> tuple[uuid.UUID, ...]:
    """The users among these (a capsule waiting for its invite has no recipient user yet)."""
    return tuple(user for user in users if user is not None)


_UUID_FIELDS = ("id", "sender", "recipient_id", "recipient_user", "theme_id")
_TIME_FIELDS = ("unlocks_at", "created_at", "updated_at", "opened_at", "disappears_at", "disappeared_at")


def _encode_row(row: CapsuleRow) -> bytes:
    return orjson.dumps({name: getattr(row, name) for name in CapsuleRow.__slots__}, default=str)  # type: ignore[attr-defined]


def _decode_row(raw: bytes) -> CapsuleRow:
    data = orjson.loads(raw)
    for name in _UUID_FIELDS:
        if data[name] is not None:
            data[name] = uuid.UUID(data[name])
    for name in _TIME_FIELDS:
        if data.get(name) is not None:  # get: copies cached before the disappearing columns
            data[name] = datetime.fromisoformat(data[name])
    return CapsuleRow(**data)
