"""The auth service's domain: accounts, sessions, profiles and search (SPEC §3, §4).

Plain async code on the storage layer; no gRPC types. Raises ServiceError subclasses.

Profiles (GetMe, GetUsers) are read from this process's kept copies (services.common.kept), then
Redis (5 min, written through on every update), then Postgres. An update drops the copy here and
publishes the user's id on the mesh's profile channel before it answers: every auth instance and
every service keeping public profiles drops its copy before the next read (changefeed.py).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import orjson
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncConnection

from services.auth import storage
from services.auth.blocklist import BlockList
from services.auth.login_limits import LoginLimits
from services.auth.passwords import Passwords
from services.auth.sessions import (
    AccessTokenIssuer,
    looks_like_refresh_token,
    new_refresh_token,
    refresh_token_hash,
)
from services.auth.storage import SearchHit, UserRecord
from services.common import idempotency, validation
from services.common.cache import Cache
from services.common.db import Database, violated_constraint
from services.common.errors import AlreadyExists, FieldErrors, InvalidArgument, Unauthenticated
from services.common.ids import new_id
from services.common.kept import KeptCopies
from services.common.pagination import Page, page_after, page_size, take_page
from services.common.tokens import Caller

# A profile's cached value once its account was deleted (forget): reads as no account.
NO_ACCOUNT = b""
SEARCH_DEFAULT_PAGE, SEARCH_MAX_PAGE = 10, 50


@dataclass(frozen=True, slots=True)
class Session:
    user: UserRecord
    access_token: str
    refresh_token: str
    expires_in: int


class Accounts:
    def __init__(
        self,
        *,
        db: Database,
        cache: Cache,
        passwords: Passwords,
        issuer: AccessTokenIssuer,
        block_list: BlockList,
        refresh_ttl: timedelta,
        profile_ttl_seconds: int,
        search_ttl_seconds: int,
        profile_changed: Callable[[uuid.UUID], Awaitable[None]],
        kept_users: KeptCopies[UserRecord],
        session_ended: Callable[[uuid.UUID], Awaitable[None]],
        login_limits: LoginLimits,
    ) -> None:
        self.db = db
        self.cache = cache
        self.passwords = passwords
        self.issuer = issuer
        self.block_list = block_list
        self.refresh_ttl = refresh_ttl
        self.profile_ttl = profile_ttl_seconds
        self.search_ttl = search_ttl_seconds
        # Tells the services that keep copies of public profiles (services.common.people), and
        # every auth instance, which keeps users too (GetMe, GetUsers: no Redis round trip).
        self.profile_changed = profile_changed
        self.kept = kept_users
        # Ends a session's access tokens in every service (sessions.SessionRevoker).
        self.session_ended = session_ended
        self.login_limits = login_limits

    # --- sign-up and log-in ------------------------------------------------------------------

    async def sign_up(
        self,
        *,
        email: str,
        username: str,
        password: str,
        first_name: str = "",
        last_name: str = "",
        avatar_url: str = "",
        country: str = "",
        idempotency_key: str | None = None,
    ) -> Session:
        # The fields come judged and normalized by their declared rules (SignUpRequest in auth.proto).
        errors = FieldErrors()
        fields = {
            "email": email,
            "username": username,
            "first_name": first_name,
            "last_name": last_name,
            "avatar_url": avatar_url,
            "country": country,
        }
        idempotency.check_key(errors, idempotency_key)
        errors.raise_if_any()

        request_hash = hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).digest()
        claim = {"operation": "signup", "caller": fields["email"].lower(), "key": idempotency_key or ""}
        # Hash before looking anything up: the answer takes as long whether or not the email exists.
        # With a key, the key is claimed first: retries of a slow sign-up come in bursts, and each
        # one then waits on the key's row (no CPU) until the first commits, and signs in to what it
        # created (one argon2 run) instead of hashing a password that will never be stored.
        password_hash = "" if idempotency_key else await self.passwords.hash(password)
        created: set[uuid.UUID] = set()
        try:
            async with self.db.write(touching=created) as conn:
                prior = None
                if idempotency_key:
                    prior = await idempotency.claim(conn, **claim, request_hash=request_hash)
                if prior is None:
                    password_hash = password_hash or await self.passwords.hash(password)
                    user = await storage.insert_user(conn, id=new_id(), password_hash=password_hash, **fields)
                    # After the insert: a deletion of the account holding these names committed
                    # before it (the insert waited on its unique keys) is seen here.
                    await _refuse_held(conn, email=fields["email"], username=fields["username"], prefix="")
                    created.add(user.id)
                    if idempotency_key:
                        await idempotency.record_result(conn, **claim, result_id=user.id)
                    return await self._start_session(conn, user)
        except sqlalchemy.exc.IntegrityError as exc:
            raise _uniqueness_error(exc, prefix="") from None
        # The same key was used before: the earlier sign-up stands; sign in to it if this is
        # really the same request (same fields and password), otherwise refuse.
        if prior.request_hash != request_hash or prior.result_id is None:
            raise idempotency.key_reused("sign-up")
        async with self.db.read() as conn:
            credentials = await storage.credentials(conn, user_id=prior.result_id)
        if credentials is None or not await self.passwords.verify(credentials.password_hash, password):
            raise idempotency.key_reused("sign-up")
        async with self.db.write() as conn:
            return await self._start_session(conn, credentials.user)

    async def log_in(self, *, email: str, username: str, password: str, client_ip: str) -> Session:
        # One of email and username, and the password: LogInRequest's declared rules.
        async with self.db.read() as conn:
            credentials = await storage.credentials(conn, email=email, username=username)
        # One count per account however it is named (login_limits.py), checked before Argon2.
        if credentials is not None:
            account = str(credentials.user.id)
        else:
            account = f"email:{email.lower()}" if email else f"username:{username.lower()}"
        await self.login_limits.check(account, client_ip)
        ok = await self.passwords.verify(credentials.password_hash if credentials else None, password)
        if not ok or credentials is None:
            await self.login_limits.failed(account, client_ip)
            raise Unauthenticated("wrong email, username or password", reason="INVALID_CREDENTIALS")
        await self.login_limits.succeeded(account)
        try:
            async with self.db.write() as conn:
                if self.passwords.needs_rehash(credentials.password_hash):
                    await storage.set_password_hash(conn, credentials.user.id, await self.passwords.hash(password))
                return await self._start_session(conn, credentials.user)
        except sqlalchemy.exc.IntegrityError:
            # The account was deleted between the password check and the session's insert.
            raise Unauthenticated("wrong email, username or password", reason="INVALID_CREDENTIALS") from None

    # --- sessions ---------------------------------------------------------------------------

    async def refresh(self, refresh_token: str) -> Session:
        if not refresh_token:
            raise InvalidArgument("refresh_token is required", violations=[("refresh_token", "is required")])
        if not looks_like_refresh_token(refresh_token):
            raise _invalid_refresh()
        failure: Unauthenticated | None = None
        ended: uuid.UUID | None = None
        async with self.db.write() as conn:
            row = await storage.lock_refresh_token(conn, refresh_token_hash(refresh_token))
            if row is None or row.revoked_at is not None:
                failure = _invalid_refresh()
            elif row.used_at is not None:
                # A spent token came back: someone holds a copy. End the whole session, for both.
                await storage.revoke_family(conn, row.family_id)
                failure = Unauthenticated(
                    "this refresh token was already used; the session is revoked, log in again",
                    reason="REFRESH_TOKEN_REUSED",
                )
                ended = row.family_id
            elif row.expires_at <= datetime.now(UTC):
                failure = Unauthenticated("the refresh token has expired; log in again", reason="TOKEN_EXPIRED")
            else:
                user = await storage.user_by_id(conn, row.user_id)
                if user is None:
                    failure = _invalid_refresh()
                else:
                    await storage.mark_refresh_token_used(conn, row.id)
                    return await self._start_session(conn, user, family_id=row.family_id)
        # Raised after the transaction committed, so a reuse's revocation is kept; the access
        # tokens of the session end with it.
        if ended is not None:
            await self.session_ended(ended)
        raise failure

    async def log_out(self, refresh_token: str) -> None:
        if not refresh_token:
            raise InvalidArgument("refresh_token is required", violations=[("refresh_token", "is required")])
        if not looks_like_refresh_token(refresh_token):
            return  # nothing it could end; log-out is idempotent
        async with self.db.write() as conn:
            family_id = await storage.family_of(conn, refresh_token_hash(refresh_token))
            if family_id is not None:
                await storage.revoke_family(conn, family_id)
        # After the commit: the session's access tokens are refused everywhere before this answers.
        if family_id is not None:
            await self.session_ended(family_id)

    async def _start_session(self, conn: object, user: UserRecord, family_id: uuid.UUID | None = None) -> Session:
        family_id = family_id or new_id()
        token = new_refresh_token()
        await storage.insert_refresh_token(
            conn,  # type: ignore[arg-type]
            id=new_id(),
            family_id=family_id,
            user_id=user.id,
            token_hash=refresh_token_hash(token),
            expires_at=datetime.now(UTC) + self.refresh_ttl,
        )
        return Session(
            user=user,
            access_token=self.issuer.issue(user.id, family_id),
            refresh_token=token,
            expires_in=self.issuer.ttl_seconds,
        )

    # --- profiles ---------------------------------------------------------------------------

    async def exists(self, caller: Caller) -> bool:
        """Whether the caller's account exists (tokens.KnownCallers)."""
        return await self._profile(caller.user_id) is not None

    async def me(self, caller: Caller) -> UserRecord:
        user = await self._profile(caller.user_id)
        if user is None:
            raise Unauthenticated("the account of this token no longer exists", reason="TOKEN_INVALID")
        return user

    async def update_me(self, caller: Caller, values: dict[str, str], mask: list[str]) -> UserRecord:
        errors = FieldErrors()
        paths = mask or [field for field in storage.UPDATABLE_COLUMNS if values.get(field)]
        changes: dict[str, str] = {}
        for path in dict.fromkeys(paths):
            if path in storage.UPDATABLE_COLUMNS:
                # Judged by the declared rules of User's fields; only a username cannot be cleared.
                changes[path] = values.get(path, "")
                if path == "username" and not changes[path]:
                    errors.add("user.username", "is required")
            elif path == "email":
                errors.add("update_mask", "email cannot be changed")
            elif path in ("id", "created_at", "updated_at"):
                errors.add("update_mask", f"{path} is set by the service and cannot be changed")
            else:
                errors.add("update_mask", f"'{path}' is not a field of the profile")
        errors.raise_if_any()
        if not changes:
            return await self.me(caller)
        try:
            async with self.db.write(touching=(caller.user_id,)) as conn:
                user = await storage.update_user(conn, caller.user_id, changes)
                if "username" in changes:
                    await _refuse_held(conn, email="", username=changes["username"], prefix="user.")
        except sqlalchemy.exc.IntegrityError as exc:
            raise _uniqueness_error(exc, prefix="user.") from None
        if user is None:
            raise Unauthenticated("the account of this token no longer exists", reason="TOKEN_INVALID")
        # Write-through after commit: the next read anywhere sees the change (SPEC §4), here and in
        # the other services' copies, which drop theirs before this call answers.
        await self.cache.put(self._profile_key(user.id), _encode_user(user), self.profile_ttl)
        self.kept.drop(user.id)
        await self.profile_changed(user.id)
        return user

    async def forget(self, user_id: uuid.UUID) -> None:
        """After the account's deletion (deletion.py): no copy of its profile survives. Redis gets an
        empty value, which reads as "no such account", written over whatever a reader that loaded
        the profile before the deletion may be storing (readers only add: SET NX); every process
        drops its kept copy before its next read."""
        await self.cache.put(self._profile_key(user_id), NO_ACCOUNT, self.profile_ttl)
        self.kept.drop(user_id)
        await self.profile_changed(user_id)

    async def username_available(self, username: str) -> tuple[str, bool]:
        async with self.db.read() as conn:
            if await storage.username_taken(conn, username):
                return username, False
            _, held = await storage.held_names(conn, email_hash=b"", username_hash=storage.username_hash(username))
            return username, not held

    async def profiles(self, ids: list[str]) -> list[UserRecord]:
        """Users by id, in the order asked, leaving out unknown ids; one cache round trip and at
        most one query."""
        # At most 100, each a UUID: GetUsersRequest's declared rules.
        wanted = list(dict.fromkeys(validation.resource_id(raw, f"ids[{i}]") for i, raw in enumerate(ids)))
        found: dict[uuid.UUID, UserRecord] = {}
        missing = wanted
        trusted = await self.kept.trusted()
        if trusted:
            found, missing = self.kept.get_many(wanted)
        if missing:
            mark = self.kept.mark()
            loaded = await self._cached_users(missing)
            if trusted:
                self.kept.keep(loaded, mark)
            found.update(loaded)
        return [found[u] for u in wanted if u in found]

    async def _cached_users(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, UserRecord]:
        """Users by id from Redis, the rest from Postgres (then cached): one round trip each."""
        keys = [self._profile_key(u) for u in ids]
        found: dict[uuid.UUID, UserRecord] = {}
        known_gone: set[uuid.UUID] = set()
        for user_id, cached in zip(ids, await self.cache.get_many(keys), strict=True):
            if cached == NO_ACCOUNT:
                known_gone.add(user_id)  # deleted: not worth a query
            elif cached is not None:
                found[user_id] = _decode_user(cached)
        missing = [u for u in ids if u not in found and u not in known_gone]
        if missing:
            loaded = await self.db.read_may_lag(lambda conn: storage.users_by_ids(conn, missing), users=missing)
            found.update((u.id, u) for u in loaded)
            await self.cache.put_many_if_absent(
                {self._profile_key(u.id): _encode_user(u) for u in loaded}, self.profile_ttl
            )
        return found

    async def _profile(self, user_id: uuid.UUID) -> UserRecord | None:
        trusted = await self.kept.trusted()
        if trusted:
            found, _ = self.kept.get_many((user_id,))
            if found:
                return found[user_id]
        mark = self.kept.mark()
        user = await self._cached_profile(user_id)
        if user is not None and trusted:
            self.kept.keep({user_id: user}, mark)
        return user

    async def _cached_profile(self, user_id: uuid.UUID) -> UserRecord | None:
        async def load() -> bytes | None:
            user = await self.db.read_may_lag(lambda conn: storage.user_by_id(conn, user_id), users=(user_id,))
            return _encode_user(user) if user else None

        cached = await self.cache.get_or_load("profile", self._profile_key(user_id), self.profile_ttl, load)
        return _decode_user(cached) if cached else None

    def _profile_key(self, user_id: uuid.UUID) -> str:
        return self.cache.key("user", str(user_id))

    # --- search -----------------------------------------------------------------------------

    async def search(self, caller: Caller, query: str, requested_page_size: int, page_token: str) -> Page[SearchHit]:
        size = page_size(requested_page_size, default=SEARCH_DEFAULT_PAGE, maximum=SEARCH_MAX_PAGE)
        list_name = "users:search:" + query.lower()
        after = page_after(page_token, list_name, int, str, caller=caller.user_id)
        blocked = sorted(await self.block_list.blocked_with(caller))
        # Results depend on the caller's block list: it is part of the key, so a new block is
        # honoured at once rather than after the 30 s TTL.
        fingerprint = hashlib.sha256(
            orjson.dumps([query.lower(), size, page_token, [str(b) for b in blocked]])
        ).hexdigest()[:32]

        async def load() -> bytes:
            # Other users' new names and sign-ups may show up here within the replicas' lag bound.
            hits = await self.db.read_may_lag(
                lambda conn: storage.search_users(
                    conn, query=query, caller=caller.user_id, blocked=blocked, after=after, limit=size + 1
                ),
                users=(caller.user_id,),
            )
            page, next_token = take_page(hits, size, list_name, lambda h: [h.tier, h.username], caller=caller.user_id)
            return orjson.dumps({"hits": [asdict(h) for h in page], "next": next_token}, default=str)

        key = self.cache.key("search", str(caller.user_id), fingerprint)
        raw = await self.cache.get_or_load("search", key, self.search_ttl, load)
        assert raw is not None
        page = orjson.loads(raw)
        hits = [SearchHit(**{**h, "id": uuid.UUID(h["id"])}) for h in page["hits"]]
        return Page(hits, page["next"])


def _uniqueness_error(exc: sqlalchemy.exc.IntegrityError, *, prefix: str) -> Exception:
    constraint = violated_constraint(exc)
    if constraint == "users_email_lower_key":
        return AlreadyExists(
            "an account with this email already exists",
            reason="EMAIL_TAKEN",
            violations=[(f"{prefix}email", "is already registered")],
        )
    if constraint == "users_username_key":
        return AlreadyExists(
            "this username is taken",
            reason="USERNAME_TAKEN",
            violations=[(f"{prefix}username", "is taken")],
        )
    return exc


async def _refuse_held(conn: AsyncConnection, *, email: str, username: str, prefix: str) -> None:
    """Refuses names a deleted account holds for 30 days (SPEC §14), as if they were taken: the
    answer says no more than "taken" does."""
    held_email, held_username = await storage.held_names(
        conn,
        email_hash=storage.email_hash(email) if email else b"",
        username_hash=storage.username_hash(username) if username else b"",
    )
    if held_email:
        raise AlreadyExists(
            "an account with this email already exists",
            reason="EMAIL_TAKEN",
            violations=[(f"{prefix}email", "is already registered")],
        )
    if held_username:
        raise AlreadyExists(
            "this username is taken", reason="USERNAME_TAKEN", violations=[(f"{prefix}username", "is taken")]
        )


def _invalid_refresh() -> Unauthenticated:
    return Unauthenticated("the refresh token is not valid; log in again", reason="TOKEN_INVALID")


def _encode_user(user: UserRecord) -> bytes:
    return orjson.dumps(asdict(user), default=str)


def _decode_user(raw: bytes) -> UserRecord:
    data = orjson.loads(raw)
    return UserRecord(
        id=uuid.UUID(data["id"]),
        email=data["email"],
        username=data["username"],
        first_name=data["first_name"],
        last_name=data["last_name"],
        avatar_url=data["avatar_url"],
        country=data["country"],
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
    )
