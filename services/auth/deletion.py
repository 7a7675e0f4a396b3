"""Account deletion (SPEC §14): `DELETE /v1/me` and the saga it starts across the services.

The saga is choreographed by events through each service's transactional outbox
(services/common/outbox.py) and consumer groups (services/common/streams.py); the auth service
keeps its state (`account_deletions`) and follows it to the end:

    DeleteMe (the password re-entered)
      one transaction: lock the user's row; note its recent sessions; record the deletion (with
      the 30-day hold on its username and email, as hashes); delete the user (its refresh tokens
      go with it); outbox ← account.deleted (now) and account.deletion_settled (now + settle)
      then, before answering: end the sessions everywhere, drop every copy of the profile
    auth (group "auth" on its own stream), on account.deleted
      the same session step again, which a crash right after the commit would have skipped
      (idempotent: revoking twice changes nothing)
    recipients, capsules, notifications (each its own group on auth's stream)
      erase, then outbox ← account.erased {service, pass: first} (services/common/erasure.py)
    … settle time later, the relay publishes account.deletion_settled: every service erases again
      (what a call in flight at the deletion wrote after the first pass), then reports pass final
    auth (group "auth" on each participant's stream), on account.erased
      records the step; the deletion is completed by the one statement that finds every final
      report and the sessions step done (storage.complete_if_done): exactly once

Every step is idempotent and every event is delivered until acknowledged after its step
committed, so a kill anywhere resumes where it stopped and running a step twice changes nothing;
the events of a deletion have ids derived from the account (outbox.derived_id), so no step is
announced twice either. Where it stands is the `account_deletions` row (GetAccountDeletion, for
operators) and the metrics below.

Sessions end at once (SPEC §3): the refresh families issued within an access-token lifetime are
revoked through the mesh's revocation list (sessions.SessionRevoker), so every service refuses
their access tokens within its change feed's delay; the account's rows are gone, so no token can
be refreshed and no log-in succeeds; and the profile's copies are dropped everywhere, so the
services' "does this account exist" check (tokens.KnownCallers) refuses its tokens as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Gauge, Histogram

from services.auth import storage
from services.auth.login_limits import LoginLimits
from services.auth.passwords import Passwords
from services.auth.storage import DeletionRow
from services.common import events, outbox
from services.common.db import Database
from services.common.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from services.common.events import Event
from services.common.failpoints import failpoint
from services.common.ids import parse_uuid
from services.common.streams import Entry
from services.common.tokens import Caller

log = logging.getLogger(__name__)

# The services that erase what belongs to an account (each reports both passes).
PARTICIPANTS = ("recipients", "capsules", "notifications")
PASSES = ("first", "final")
# SPEC §14: a deleted account's username and email are free again after this.
NAME_HOLD = timedelta(days=30)

REQUESTED = Counter("account_deletions_requested_total", "Account deletions asked (DeleteMe succeeded)")
COMPLETED = Counter("account_deletions_completed_total", "Account deletions completed (every step done)")
DURATION = Histogram(
    "account_deletion_seconds",
    "From a deletion's request to its completion",
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
STEPS = Counter(
    "account_deletion_steps_total", "Steps of account deletions recorded (sessions, <service>:<pass>)", ["step"]
)
UNFINISHED = Gauge("account_deletions_unfinished", "Account deletions asked and not completed")
OLDEST = Gauge(
    "account_deletion_oldest_unfinished_seconds", "Age of the oldest account deletion not completed (0: none)"
)
MALFORMED = Counter("account_deletion_events_malformed_total", "Saga entries that were not events (skipped)")


class AccountDeletions:
    def __init__(
        self,
        *,
        db: Database,
        passwords: Passwords,
        login_limits: LoginLimits,
        session_ended: Callable[[uuid.UUID], Awaitable[None]],
        forget_profile: Callable[[uuid.UUID], Awaitable[None]],
        session_window_seconds: int,
        settle_seconds: float,
    ) -> None:
        self.db = db
        self.passwords = passwords
        self.login_limits = login_limits
        # Ends a session's access tokens in every service (sessions.SessionRevoker).
        self.session_ended = session_ended
        # Drops every copy of the account's profile (Accounts.forget).
        self.forget_profile = forget_profile
        # Sessions issued within this many seconds may still have valid access tokens.
        self.session_window = session_window_seconds
        # How long after the deletion the final pass runs: longer than any call can last.
        self.settle = timedelta(seconds=settle_seconds)

    # --- the request ----------------------------------------------------------------------------

    async def delete_me(self, caller: Caller, password: str, client_ip: str) -> None:
        if not password:
            raise InvalidArgument("password is required", violations=[("password", "is required")])
        user = caller.user_id
        async with self.db.read() as conn:
            credentials = await storage.credentials(conn, user_id=user)
        if credentials is None:
            raise Unauthenticated("the account of this token no longer exists", reason="TOKEN_INVALID")
        # A stolen access token must not buy unlimited password guesses: the log-in limits apply.
        account = str(user)
        await self.login_limits.check(account, client_ip)
        if not await self.passwords.verify(credentials.password_hash, password):
            await self.login_limits.failed(account, client_ip)
            raise PermissionDenied(
                "the password is not this account's",
                reason="WRONG_PASSWORD",
                violations=[("password", "is not this account's password")],
            )
        await self.login_limits.succeeded(account)

        now = datetime.now(UTC)
        async with self.db.write(touching=(user,)) as conn:
            names = await storage.lock_user(conn, user)
            if names is None:  # a parallel DeleteMe of the same account won
                raise Unauthenticated("the account of this token no longer exists", reason="TOKEN_INVALID")
            email, username = names
            # After the lock: a refresh committed before it is seen, one after it fails (no user).
            sessions = set(await storage.recent_sessions(conn, user, self.session_window))
            caller_session = parse_uuid(caller.session_id)
            if caller_session is not None:
                sessions.add(caller_session)
            await storage.delete_user(
                conn,
                user,
                requested_at=now,
                email_hash=storage.email_hash(email),
                username_hash=storage.username_hash(username),
                names_free_at=now + NAME_HOLD,
                sessions=sorted(sessions),
            )
            data = {"user_id": str(user), "requested_at": now.isoformat()}
            for type_, at in ((events.ACCOUNT_DELETED, now), (events.ACCOUNT_DELETION_SETTLED, now + self.settle)):
                await outbox.add(conn, outbox.event(type_, data, id=outbox.derived_id(type_, user), at=at))
        REQUESTED.inc()
        log.info("account deletion asked", extra={"fields": {"sessions": len(sessions)}})
        # Committed, sessions not ended: the saga's own consumer ends them (handle_own).
        failpoint("deletion.committed")
        await self.end_sessions(user)

    # --- the saga's steps -----------------------------------------------------------------------

    async def end_sessions(self, user: uuid.UUID) -> None:
        """Every session of the deleted account ended in every service, every copy of its profile
        dropped (idempotent)."""
        async with self.db.read() as conn:
            row = await storage.deletion(conn, user)
        if row is None:
            return  # no such deletion (purged 30 days after it completed)
        for session in row.sessions:
            await self.session_ended(session)
        await self.forget_profile(user)
        async with self.db.write() as conn:
            if await storage.mark_sessions_ended(conn, user):
                STEPS.labels("sessions").inc()
            took = await storage.complete_if_done(conn, user, list(PARTICIPANTS))
        self._maybe_completed(took)

    async def erased(self, user: uuid.UUID, service: str, pass_: str) -> None:
        """A participant's report: recorded once; the last one completes the deletion."""
        async with self.db.write() as conn:
            if await storage.mark_erased(conn, user, service, pass_):
                STEPS.labels(f"{service}:{pass_}").inc()
            took = await storage.complete_if_done(conn, user, list(PARTICIPANTS))
        # Recorded, the report not acked: delivered again, it changes nothing.
        failpoint("deletion.recorded")
        self._maybe_completed(took)

    def _maybe_completed(self, took: float | None) -> None:
        if took is None:
            return
        COMPLETED.inc()
        DURATION.observe(took)
        log.info("account deletion completed", extra={"fields": {"seconds": round(took, 3)}})

    # --- the consumers' handles (services/common/streams.py) ------------------------------------

    async def handle_own(self, entries: Sequence[Entry]) -> None:
        """Auth's own stream: resume the session step of each deletion (account.deleted)."""
        for entry_id, fields in entries:
            event = _event(entry_id, fields)
            if event is not None and event.type == events.ACCOUNT_DELETED:
                user = _uuid(event, "user_id")
                if user is not None:
                    await self.end_sessions(user)

    async def handle_reports(self, entries: Sequence[Entry]) -> None:
        """A participant's stream: its account.erased reports (its other events concern others)."""
        for entry_id, fields in entries:
            event = _event(entry_id, fields)
            if event is None or event.type != events.ACCOUNT_ERASED:
                continue
            user = _uuid(event, "user_id")
            service, pass_ = event.data.get("service"), event.data.get("pass")
            if user is None or service not in PARTICIPANTS or pass_ not in PASSES:
                MALFORMED.inc()
                log.warning("malformed erasure report skipped", extra={"fields": {"entry": entry_id}})
                continue
            await self.erased(user, str(service), str(pass_))

    # --- operators --------------------------------------------------------------------------------

    async def status(self, user_id: str) -> DeletionRow:
        user = parse_uuid(user_id)
        if user is None:
            raise InvalidArgument("user_id must be a UUID", violations=[("user_id", "must be a UUID")])
        async with self.db.read() as conn:
            row = await storage.deletion(conn, user)
        if row is None:
            raise NotFound("no deletion of this account is on record")
        return row

    async def measure(self) -> None:
        async with self.db.read() as conn:
            row = (await conn.execute(storage.UNFINISHED)).one()
        UNFINISHED.set(row.n)
        OLDEST.set(max((datetime.now(UTC) - row.oldest).total_seconds(), 0.0) if row.oldest else 0.0)

    async def monitor(self, stop: asyncio.Event, interval_seconds: float = 5.0) -> None:
        """The gauges, every few seconds (a failure to read them is only logged)."""
        while not stop.is_set():
            try:
                await self.measure()
            except Exception as exc:
                log.warning("account deletions not measured", extra={"fields": {"error": type(exc).__name__}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_seconds)


def state(row: DeletionRow) -> str:
    """erasing → settling → completed (the proto's AccountDeletionState, without its prefix)."""
    if row.completed_at is not None:
        return "COMPLETED"
    if set(PARTICIPANTS) <= set(row.erased_first) and row.sessions_ended_at is not None:
        return "SETTLING"
    return "ERASING"


def _event(entry_id: str, fields: object) -> Event | None:
    try:
        return Event.from_fields(fields)  # type: ignore[arg-type]
    except (KeyError, ValueError, TypeError) as exc:
        MALFORMED.inc()
        log.warning("malformed saga entry skipped", extra={"fields": {"entry": entry_id, "error": type(exc).__name__}})
        return None


def _uuid(event: Event, name: str) -> uuid.UUID | None:
    value = event.data.get(name)
    return parse_uuid(value) if isinstance(value, str) else None
