"""Connection requests, connections and blocks: the rules of SPEC §5, as plain async code.

Every rule is checked inside the transaction that makes the change, under transaction-level
advisory locks (one per sender, one per pair of users), with unique indexes as the backstop:
concurrent calls cannot both pass a check. Caches (relationship of a pair, block list of a user)
are written through after every commit that changes them, so the next read anywhere sees it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common import events, idempotency, outbox, validation
from services.common.cache import Cache
from services.common.db import Database, violated_constraint
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldErrors,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from services.common.ids import new_id
from services.common.pagination import Page, page_after, page_size, take_page
from services.common.people import Directory, Profile
from services.common.tokens import Caller
from services.recipients import storage
from services.recipients.storage import BlockRow, ConnectionRow, RequestRow

DAILY_REQUEST_LIMIT = 5
COOL_DOWN_DAYS = 7
# Same words whether the user does not exist or a block stands between the two (SPEC §3, §5).
UNKNOWN_USER = "no user with this id"


@dataclass(frozen=True, slots=True)
class ConnectionWithProfile:
    connection: ConnectionRow
    profile: Profile | None


@dataclass(frozen=True, slots=True)
class Relationship:
    connected: bool
    blocked: bool


class Relationships:
    def __init__(self, *, db: Database, cache: Cache, directory: Directory, ttl_seconds: int) -> None:
        self.db = db
        self.cache = cache
        self.directory = directory
        self.ttl = ttl_seconds

    # --- sending -----------------------------------------------------------------------------

    async def send(self, caller: Caller, to_user_id: str, message: str, idempotency_key: str | None) -> RequestRow:
        # to_user_id and message were judged by SendConnectionRequestRequest's declared rules.
        errors = FieldErrors()
        to_user = validation.resource_id(to_user_id, "to_user_id")
        idempotency.check_key(errors, idempotency_key)
        errors.raise_if_any()
        me = caller.user_id
        if to_user == me:
            raise InvalidArgument(
                "you cannot send a connection request to yourself",
                reason="SELF_REQUEST",
                violations=[("to_user_id", "must be another user")],
            )
        # Outside the transaction: no lock is held while auth answers. One call gives existence
        # and both profiles (needed if a crossing request gets accepted).
        profiles = await self.directory.profiles(caller, [to_user, me])
        if to_user not in profiles:
            raise _unknown_user("to_user_id")

        request_hash = hashlib.sha256(orjson.dumps([str(to_user), message])).digest()
        claim = {"operation": "connection-request", "caller": str(me), "key": idempotency_key or ""}
        accepted_crossing = False
        try:
            async with self.db.write(touching=(me, to_user)) as conn:
                prior = None
                if idempotency_key:
                    prior = await idempotency.claim(conn, **claim, request_hash=request_hash)
                if prior is None:
                    await storage.lock_sender(conn, me)
                    await storage.lock_pair(conn, me, to_user)
                    if await storage.blocked_either_way(conn, me, to_user):
                        raise _unknown_user("to_user_id")
                    if await storage.connected(conn, me, to_user):
                        raise AlreadyExists(
                            "you are already connected with this user",
                            reason="ALREADY_CONNECTED",
                            violations=[("to_user_id", "is already a connection")],
                        )
                    theirs = await storage.pending_request(conn, to_user, me)
                    if theirs is not None:
                        # Crossing requests: asking someone who already asked you accepts theirs.
                        result = await self._accept(conn, theirs, profiles)
                        accepted_crossing = True
                    else:
                        if await storage.pending_request(conn, me, to_user) is not None:
                            raise _pending()
                        declined_at = await storage.declined_since(conn, me, to_user, COOL_DOWN_DAYS)
                        if declined_at is not None:
                            retry_at = declined_at + timedelta(days=COOL_DOWN_DAYS)
                            raise FailedPrecondition(
                                f"this user declined your request; you may ask again after {retry_at.isoformat()}",
                                reason="COOL_DOWN",
                                metadata={"retry_at": retry_at.isoformat()},
                            )
                        count, oldest = await storage.requests_sent_since(conn, me, 24)
                        if count >= DAILY_REQUEST_LIMIT:
                            free_at = (oldest or datetime.now(UTC)) + timedelta(hours=24)
                            raise ResourceExhausted(
                                f"at most {DAILY_REQUEST_LIMIT} connection requests per 24 hours; "
                                f"try again after {free_at.isoformat()}",
                                reason="REQUEST_LIMIT_REACHED",
                                metadata={"retry_at": free_at.isoformat()},
                            )
                        result = await storage.insert_request(
                            conn, id=new_id(), from_user=me, to_user=to_user, message=message
                        )
                        await outbox.add(conn, _request_event(events.CONNECTION_REQUEST_RECEIVED, result))
                    if idempotency_key:
                        await idempotency.record_result(conn, **claim, result_id=result.id)
        except sqlalchemy.exc.IntegrityError as exc:
            if violated_constraint(exc) == "connection_requests_pending_pair_key":
                raise _pending() from None
            raise
        if prior is not None:
            return await self._replay(caller, prior, request_hash)
        if accepted_crossing:
            await self._refresh_pair(me, to_user)
        return result

    async def _replay(self, caller: Caller, prior: idempotency.PriorRequest, request_hash: bytes) -> RequestRow:
        if prior.request_hash != request_hash or prior.result_id is None:
            raise idempotency.key_reused()
        async with self.db.read() as conn:
            row = await storage.request_by_id(conn, prior.result_id)
        if row is None or caller.user_id not in (row.from_user, row.to_user):
            raise NotFound("this connection request no longer exists")
        return row

    # --- responding ----------------------------------------------------------------------------

    async def accept(self, caller: Caller, request_id: str) -> RequestRow:
        rid = validation.resource_id(request_id)
        async with self.db.read() as conn:
            seen = await storage.request_by_id(conn, rid)
        if seen is None or seen.to_user != caller.user_id:
            raise _no_request()
        profiles = await self.directory.profiles(caller, [seen.from_user, seen.to_user])
        async with self.db.write(touching=(seen.from_user, seen.to_user)) as conn:
            await storage.lock_pair(conn, seen.from_user, seen.to_user)
            row = await storage.request_by_id(conn, rid, for_update=True)
            if row is None or row.to_user != caller.user_id:
                raise _no_request()
            _require_pending(row)
            result = await self._accept(conn, row, profiles)
        await self._refresh_pair(result.from_user, result.to_user)
        return result

    async def _accept(self, conn: AsyncConnection, row: RequestRow, profiles: dict[uuid.UUID, Profile]) -> RequestRow:
        """The request accepted, the connection made and a linked recipient on each side: one
        transaction (the caller's)."""
        result = await storage.set_request_status(conn, row.id, "accepted")
        await outbox.add(conn, _request_event(events.CONNECTION_REQUEST_ACCEPTED, result))
        await storage.insert_connection(conn, new_id(), row.from_user, row.to_user)
        for owner, other in ((row.from_user, row.to_user), (row.to_user, row.from_user)):
            profile = profiles.get(other)
            await storage.ensure_linked_recipient(
                conn,
                id=new_id(),
                owner=owner,
                linked_user=other,
                name=profile.display_name if profile else "user",
            )
        return result

    async def decline(self, caller: Caller, request_id: str, reason: str) -> RequestRow:
        rid = validation.resource_id(request_id)
        touched = {caller.user_id}
        async with self.db.write(touching=touched) as conn:
            row = await storage.request_by_id(conn, rid, for_update=True)
            if row is None or row.to_user != caller.user_id:
                raise _no_request()
            touched.add(row.from_user)
            _require_pending(row)
            return await storage.set_request_status(conn, rid, "declined", reason)

    async def cancel(self, caller: Caller, request_id: str) -> RequestRow:
        rid = validation.resource_id(request_id)
        touched = {caller.user_id}
        async with self.db.write(touching=touched) as conn:
            row = await storage.request_by_id(conn, rid, for_update=True)
            if row is None or row.from_user != caller.user_id:
                raise _no_request()
            touched.add(row.to_user)
            _require_pending(row)
            return await storage.set_request_status(conn, rid, "cancelled")

    async def list_requests(
        self, caller: Caller, *, incoming: bool, requested_size: int, token: str
    ) -> Page[RequestRow]:
        size = page_size(requested_size)
        name = "requests:incoming" if incoming else "requests:outgoing"
        (after,) = page_after(token, name, uuid.UUID, caller=caller.user_id) or (None,)
        rows = await self.db.read_may_lag(
            lambda conn: storage.list_requests(conn, caller.user_id, incoming=incoming, after=after, limit=size + 1),
            users=(caller.user_id,),
        )
        return Page(*take_page(rows, size, name, _by_id, caller=caller.user_id))

    # --- connections -----------------------------------------------------------------------------

    async def list_connections(self, caller: Caller, requested_size: int, token: str) -> Page[ConnectionWithProfile]:
        size = page_size(requested_size)
        (after,) = page_after(token, "connections", uuid.UUID, caller=caller.user_id) or (None,)
        read = await self.db.driver_read_may_lag(
            lambda conn: storage.list_connections(conn, caller.user_id, after=after, limit=size + 1),
            users=(caller.user_id,),
        )
        rows, next_token = take_page(read, size, "connections", _by_id, caller=caller.user_id)
        # One batched call to auth for the whole page (≤ 100 ids), never one per row.
        profiles = await self.directory.profiles(caller, [r.other for r in rows])
        return Page([ConnectionWithProfile(r, profiles.get(r.other)) for r in rows], next_token)

    async def remove_connection(self, caller: Caller, user_id: str) -> None:
        other = validation.resource_id(user_id, "user_id")
        async with self.db.write(touching=(caller.user_id, other)) as conn:
            await storage.lock_pair(conn, caller.user_id, other)
            removed = await storage.delete_connection(conn, caller.user_id, other)
        if not removed:
            raise NotFound("you are not connected with this user", reason="NOT_FOUND")
        await self._refresh_pair(caller.user_id, other)

    # --- blocks ----------------------------------------------------------------------------------

    async def block(self, caller: Caller, user_id: str) -> BlockRow:
        other = validation.resource_id(user_id, "user_id")
        if other == caller.user_id:
            raise InvalidArgument("you cannot block yourself", violations=[("user_id", "must be another user")])
        if other not in await self.directory.profiles(caller, [other]):
            raise _unknown_user("user_id")
        async with self.db.write(touching=(caller.user_id, other)) as conn:
            await storage.lock_pair(conn, caller.user_id, other)
            row = await storage.insert_block(conn, new_id(), caller.user_id, other)
            await storage.delete_connection(conn, caller.user_id, other)
            await storage.cancel_pending_between(conn, caller.user_id, other)
        await self._refresh_pair(caller.user_id, other, block_lists=True)
        return row

    async def unblock(self, caller: Caller, user_id: str) -> None:
        other = validation.resource_id(user_id, "user_id")
        async with self.db.write(touching=(caller.user_id, other)) as conn:
            await storage.lock_pair(conn, caller.user_id, other)
            await storage.delete_block(conn, caller.user_id, other)
        await self._refresh_pair(caller.user_id, other, block_lists=True)

    async def list_blocks(self, caller: Caller, requested_size: int, token: str) -> Page[BlockRow]:
        size = page_size(requested_size)
        (after,) = page_after(token, "blocks", uuid.UUID, caller=caller.user_id) or (None,)
        rows = await self.db.read_may_lag(
            lambda conn: storage.list_blocks(conn, caller.user_id, after=after, limit=size + 1),
            users=(caller.user_id,),
        )
        return Page(*take_page(rows, size, "blocks", _by_id, caller=caller.user_id))

    # --- internal API (cached) -------------------------------------------------------------------

    async def relationship(self, caller: Caller, user_id: str, other_user_id: str) -> Relationship:
        me = validation.resource_id(user_id, "user_id")
        other = validation.resource_id(other_user_id, "other_user_id")
        _require_self(caller, me)
        if me == other:
            return Relationship(connected=False, blocked=False)
        raw = await self.cache.get_or_load(
            "relationship", self._pair_key(me, other), self.ttl, lambda: self._load_pair(me, other)
        )
        assert raw is not None
        data = orjson.loads(raw)
        return Relationship(connected=data["connected"], blocked=data["blocked"])

    async def blocked_with(self, caller: Caller, user_id: str) -> list[uuid.UUID]:
        me = validation.optional_id(user_id, "user_id") or caller.user_id
        _require_self(caller, me)
        raw = await self.cache.get_or_load("block_list", self._blocks_key(me), self.ttl, lambda: self._load_blocks(me))
        assert raw is not None
        return [uuid.UUID(u) for u in orjson.loads(raw)]

    async def _load_pair(self, a: uuid.UUID, b: uuid.UUID) -> bytes:
        async with self.db.read() as conn:
            connected = await storage.connected(conn, a, b)
            blocked = await storage.blocked_either_way(conn, a, b)
        return orjson.dumps({"connected": connected, "blocked": blocked})

    async def _load_blocks(self, user: uuid.UUID) -> bytes:
        async with self.db.read() as conn:
            users = await storage.block_relations(conn, user)
        return orjson.dumps(sorted(str(u) for u in users))

    async def refresh_pair(self, a: uuid.UUID, b: uuid.UUID, *, block_lists: bool = False) -> None:
        """The pair's cached answer (and their block lists) rewritten after a commit made elsewhere
        (invites.py, erasure.py)."""
        await self._refresh_pair(a, b, block_lists=block_lists)

    async def _refresh_pair(self, a: uuid.UUID, b: uuid.UUID, *, block_lists: bool = False) -> None:
        """Write-through after a commit: the cached answers become the committed ones. (A reader
        that loaded the old state meanwhile stores with SET NX, so it cannot overwrite them.)"""
        await self.cache.put(self._pair_key(a, b), await self._load_pair(a, b), self.ttl)
        if block_lists:
            for user in (a, b):
                await self.cache.put(self._blocks_key(user), await self._load_blocks(user), self.ttl)

    def _pair_key(self, a: uuid.UUID, b: uuid.UUID) -> str:
        low, high = storage.ordered(a, b)
        return self.cache.key("rel", str(low), str(high))

    def _blocks_key(self, user: uuid.UUID) -> str:
        return self.cache.key("blocked", str(user))


def _request_event(type_: str, row: RequestRow) -> events.Event:
    """A connection request's event, for the outbox (in the transaction that changed it)."""
    return outbox.event(
        type_, {"request_id": str(row.id), "from_user": str(row.from_user), "to_user": str(row.to_user)}
    )


def _by_id(row: RequestRow | ConnectionRow | BlockRow) -> list[uuid.UUID]:
    return [row.id]


def _require_pending(row: RequestRow) -> None:
    if row.status != "pending":
        raise FailedPrecondition(f"this request is already {row.status}", reason="REQUEST_NOT_PENDING")


def _require_self(caller: Caller, user: uuid.UUID) -> None:
    if user != caller.user_id:
        raise PermissionDenied(
            "a caller may only ask about their own relationships", violations=[("user_id", "must be the caller")]
        )


def _unknown_user(field: str) -> NotFound:
    return NotFound(UNKNOWN_USER, violations=[(field, UNKNOWN_USER)])


def _no_request() -> NotFound:
    return NotFound("no connection request with this id")


def _pending() -> AlreadyExists:
    return AlreadyExists(
        "a connection request to this user is already pending",
        reason="REQUEST_PENDING",
        violations=[("to_user_id", "has a pending request from you")],
    )
