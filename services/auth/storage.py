"""The auth service's tables and queries (SQL through the service's SQLAlchemy async engine).

Every query here is backed by an index of migrations/versions (tests check with EXPLAIN: the
statements tests/auth/test_query_plans.py reads are public names).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.purge import Target, rows_where

USER_COLUMNS = "id, email, username, first_name, last_name, avatar_url, country, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: uuid.UUID
    email: str
    username: str
    first_name: str
    last_name: str
    avatar_url: str
    country: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Credentials:
    user: UserRecord
    password_hash: str


@dataclass(frozen=True, slots=True)
class RefreshTokenRow:
    id: uuid.UUID
    family_id: uuid.UUID
    user_id: uuid.UUID
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


def _user(row: object) -> UserRecord:
    m = row._mapping  # type: ignore[attr-defined]
    return UserRecord(
        id=m["id"],
        email=m["email"],
        username=m["username"],
        first_name=m["first_name"],
        last_name=m["last_name"],
        avatar_url=m["avatar_url"],
        country=m["country"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


# --- users -------------------------------------------------------------------------------------

_INSERT_USER = text(
    f"""
    INSERT INTO users (id, email, username, password_hash, first_name, last_name, avatar_url, country)
    VALUES (:id, :email, :username, :password_hash, :first_name, :last_name, :avatar_url, :country)
    RETURNING {USER_COLUMNS}
    """
)


async def insert_user(conn: AsyncConnection, **values: object) -> UserRecord:
    row = (await conn.execute(_INSERT_USER, values)).one()
    return _user(row)


_USER_BY_ID = text(f"SELECT {USER_COLUMNS} FROM users WHERE id = :id")


async def user_by_id(conn: AsyncConnection, user_id: uuid.UUID) -> UserRecord | None:
    row = (await conn.execute(_USER_BY_ID, {"id": user_id})).first()
    return _user(row) if row else None


_USERS_BY_IDS = text(f"SELECT {USER_COLUMNS} FROM users WHERE id = ANY(:ids)")


async def users_by_ids(conn: AsyncConnection, user_ids: list[uuid.UUID]) -> list[UserRecord]:
    rows = (await conn.execute(_USERS_BY_IDS, {"ids": user_ids})).all()
    return [_user(r) for r in rows]


_CREDENTIALS_BY_EMAIL = text(f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE lower(email) = lower(:v)")
_CREDENTIALS_BY_USERNAME = text(f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = :v")
_CREDENTIALS_BY_ID = text(f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE id = :v")


async def credentials(
    conn: AsyncConnection, *, email: str = "", username: str = "", user_id: uuid.UUID | None = None
) -> Credentials | None:
    if user_id is not None:
        statement, value = _CREDENTIALS_BY_ID, user_id
    elif email:
        statement, value = _CREDENTIALS_BY_EMAIL, email  # type: ignore[assignment]
    else:
        statement, value = _CREDENTIALS_BY_USERNAME, username  # type: ignore[assignment]
    row = (await conn.execute(statement, {"v": value})).first()
    if row is None:
        return None
    return Credentials(user=_user(row), password_hash=row._mapping["password_hash"])


async def set_password_hash(conn: AsyncConnection, user_id: uuid.UUID, password_hash: str) -> None:
    await conn.execute(text("UPDATE users SET password_hash = :h WHERE id = :id"), {"h": password_hash, "id": user_id})


UPDATABLE_COLUMNS = ("username", "first_name", "last_name", "avatar_url", "country")


async def update_user(conn: AsyncConnection, user_id: uuid.UUID, changes: dict[str, str]) -> UserRecord | None:
    assignments = ", ".join(f"{column} = :{column}" for column in changes if column in UPDATABLE_COLUMNS)
    statement = text(f"UPDATE users SET {assignments}, updated_at = now() WHERE id = :id RETURNING {USER_COLUMNS}")
    row = (await conn.execute(statement, {**changes, "id": user_id})).first()
    return _user(row) if row else None


_USERNAME_TAKEN = text("SELECT EXISTS (SELECT 1 FROM users WHERE username = :u)")


async def username_taken(conn: AsyncConnection, username: str) -> bool:
    return bool((await conn.execute(_USERNAME_TAKEN, {"u": username})).scalar_one())


# --- search ------------------------------------------------------------------------------------
# Four tiers, best first; each is one index-backed branch and leaves out what a better tier
# already matched, so a user appears once and the (tier, username) keyset is stable:
#   0 exact email (users_email_lower_key)   1 username prefix (users_username_key)
#   2 first or last name prefix (…_prefix_idx)   3 fuzzy full name, 3+ characters (…_trgm_idx)
# The caller and everyone in a block relation with the caller are excluded in SQL.

SEARCH = text(
    """
    WITH candidates AS (
        (SELECT 0 AS tier, id, username, first_name, last_name, avatar_url FROM users
          WHERE :is_email AND lower(email) = :q
            AND id <> :caller AND NOT (id = ANY(:blocked)))
        UNION ALL
        (SELECT 1, id, username, first_name, last_name, avatar_url FROM users
          WHERE username LIKE :prefix
            AND NOT (:is_email AND lower(email) = :q)
            AND id <> :caller AND NOT (id = ANY(:blocked))
            AND (:after_tier < 1 OR (:after_tier = 1 AND username > :after_username))
          ORDER BY username LIMIT :limit)
        UNION ALL
        (SELECT 2, id, username, first_name, last_name, avatar_url FROM users
          WHERE (lower(first_name) LIKE :prefix OR lower(last_name) LIKE :prefix)
            AND username NOT LIKE :prefix
            AND NOT (:is_email AND lower(email) = :q)
            AND id <> :caller AND NOT (id = ANY(:blocked))
            AND (:after_tier < 2 OR (:after_tier = 2 AND username > :after_username))
          ORDER BY username LIMIT :limit)
        UNION ALL
        (SELECT 3, id, username, first_name, last_name, avatar_url FROM users
          WHERE :fuzzy AND lower(first_name || ' ' || last_name) % :q
            AND NOT (lower(first_name) LIKE :prefix OR lower(last_name) LIKE :prefix)
            AND username NOT LIKE :prefix
            AND NOT (:is_email AND lower(email) = :q)
            AND id <> :caller AND NOT (id = ANY(:blocked))
            AND (:after_tier < 3 OR (:after_tier = 3 AND username > :after_username))
          ORDER BY username LIMIT :limit)
    )
    SELECT tier, id, username, first_name, last_name, avatar_url FROM candidates
     WHERE tier > :after_tier OR (tier = :after_tier AND username > :after_username)
     ORDER BY tier, username
     LIMIT :limit
    """
)


@dataclass(frozen=True, slots=True)
class SearchHit:
    tier: int
    id: uuid.UUID
    username: str
    first_name: str
    last_name: str
    avatar_url: str


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_users(
    conn: AsyncConnection,
    *,
    query: str,
    caller: uuid.UUID,
    blocked: list[uuid.UUID],
    after: tuple[int, str] | None,
    limit: int,
) -> list[SearchHit]:
    q = query.lower()
    after_tier, after_username = after if after else (-1, "")
    rows = await conn.execute(
        SEARCH,
        {
            "q": q,
            "prefix": escape_like(q) + "%",
            "is_email": "@" in q,
            "fuzzy": len(q) >= 3,
            "caller": caller,
            "blocked": blocked,
            "after_tier": after_tier,
            "after_username": after_username,
            "limit": limit,
        },
    )
    return [SearchHit(**r._mapping) for r in rows]


# --- refresh tokens ------------------------------------------------------------------------------

_INSERT_REFRESH = text(
    """
    INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at)
    VALUES (:id, :family_id, :user_id, :token_hash, :expires_at)
    """
)


async def insert_refresh_token(
    conn: AsyncConnection,
    *,
    id: uuid.UUID,
    family_id: uuid.UUID,
    user_id: uuid.UUID,
    token_hash: bytes,
    expires_at: datetime,
) -> None:
    await conn.execute(
        _INSERT_REFRESH,
        {"id": id, "family_id": family_id, "user_id": user_id, "token_hash": token_hash, "expires_at": expires_at},
    )


_LOCK_REFRESH = text(
    """
    SELECT id, family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens
     WHERE token_hash = :h FOR UPDATE
    """
)


async def lock_refresh_token(conn: AsyncConnection, token_hash: bytes) -> RefreshTokenRow | None:
    row = (await conn.execute(_LOCK_REFRESH, {"h": token_hash})).first()
    return RefreshTokenRow(**row._mapping) if row else None


async def mark_refresh_token_used(conn: AsyncConnection, token_id: uuid.UUID) -> None:
    await conn.execute(text("UPDATE refresh_tokens SET used_at = now() WHERE id = :id"), {"id": token_id})


async def revoke_family(conn: AsyncConnection, family_id: uuid.UUID) -> None:
    await conn.execute(
        text("UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = :f AND revoked_at IS NULL"),
        {"f": family_id},
    )


_FAMILY_OF = text("SELECT family_id FROM refresh_tokens WHERE token_hash = :h")


async def family_of(conn: AsyncConnection, token_hash: bytes) -> uuid.UUID | None:
    return (await conn.execute(_FAMILY_OF, {"h": token_hash})).scalar_one_or_none()


# --- the housekeeping purge (services/common/purge.py) --------------------------------------------
# Reuse detection (SPEC §3: a rotated token presented again revokes its whole family) needs every
# spent token of a session for as long as the session can go on, however old the token: so rows
# are purged by session, never one by one. A family's one unused token is its newest (a rotation
# marks the old one used and inserts the next in the same transaction); the session has ended
# when that token can no longer be refreshed: expired or revoked, from least(expires_at,
# revoked_at) on (LEAST skips a NULL). After REFRESH_TOKEN_RETENTION_SECONDS more (a client coming
# back soon still hears TOKEN_EXPIRED rather than TOKEN_INVALID) the whole family goes: its spent
# tokens first, then, once none is left, the last one, which is what marks the family as ended —
# deleted first, it would leave the others behind for good. Nothing can be added to an ended
# family (its last token cannot be refreshed), so no row is ever orphaned. A session that goes on
# keeps one row per rotation until it ends.
# Index: refresh_tokens_session_end_idx (the partial index of unused tokens by end), then
# refresh_tokens_family_idx.
_ENDED = "used_at IS NULL AND least(expires_at, revoked_at) < now() - make_interval(secs => :retention_seconds)"
# A batch looks at :limit ended sessions at most, in the index's order (the ORDER BY keeps the
# planner on the index whatever it guesses of the expression's selectivity: a partial index has
# no statistics), and takes up to :limit of their spent tokens.
_PURGE_SPENT_OF_ENDED = text(
    f"""
    DELETE FROM refresh_tokens WHERE ctid = ANY(ARRAY(
        SELECT spent.ctid
          FROM (SELECT family_id FROM refresh_tokens WHERE {_ENDED}
                 ORDER BY least(expires_at, revoked_at) LIMIT :limit) AS ended
          JOIN refresh_tokens spent ON spent.family_id = ended.family_id AND spent.used_at IS NOT NULL
         LIMIT :limit
           FOR UPDATE OF spent SKIP LOCKED))
    """
)
_PURGE_LAST_OF_ENDED = text(
    f"""
    DELETE FROM refresh_tokens WHERE ctid = ANY(ARRAY(
        SELECT ended.ctid
          FROM (SELECT ctid, family_id FROM refresh_tokens WHERE {_ENDED}
                 ORDER BY least(expires_at, revoked_at) LIMIT :limit) AS ended
         WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens spent
                            WHERE spent.family_id = ended.family_id AND spent.used_at IS NOT NULL)
           FOR UPDATE SKIP LOCKED))
    """
)


def refresh_tokens_purge(retention_seconds: int) -> Target:
    return Target(
        "refresh_tokens", (_PURGE_SPENT_OF_ENDED, _PURGE_LAST_OF_ENDED), {"retention_seconds": retention_seconds}
    )


# --- account deletions (deletion.py) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeletionRow:
    user_id: uuid.UUID
    requested_at: datetime
    names_free_at: datetime
    sessions: list[uuid.UUID]
    sessions_ended_at: datetime | None
    erased_first: list[str]
    erased_final: list[str]
    completed_at: datetime | None


DELETION_COLUMNS = (
    "user_id, requested_at, names_free_at, sessions, sessions_ended_at, erased_first, erased_final, completed_at"
)

_LOCK_USER = text("SELECT id, email, username FROM users WHERE id = :id FOR UPDATE")


async def lock_user(conn: AsyncConnection, user_id: uuid.UUID) -> tuple[str, str] | None:
    """(email, username) of the user, locked: no token can be issued to it until the transaction
    ends (a refresh token's insert waits on the user's row for its foreign key check)."""
    row = (await conn.execute(_LOCK_USER, {"id": user_id})).first()
    return (row.email, row.username) if row else None


# refresh_tokens_user_idx: the sessions whose access tokens may still be valid (issued within a
# token lifetime): the ones a deletion must end everywhere.
_RECENT_SESSIONS = text(
    "SELECT DISTINCT family_id FROM refresh_tokens WHERE user_id = :id "
    "AND created_at > now() - make_interval(secs => :within_seconds)"
)


async def recent_sessions(conn: AsyncConnection, user_id: uuid.UUID, within_seconds: int) -> list[uuid.UUID]:
    rows = await conn.execute(_RECENT_SESSIONS, {"id": user_id, "within_seconds": within_seconds})
    return [row.family_id for row in rows]


_INSERT_DELETION = text(
    "INSERT INTO account_deletions (user_id, requested_at, email_hash, username_hash, names_free_at, sessions) "
    "VALUES (:user_id, :requested_at, :email_hash, :username_hash, :names_free_at, :sessions)"
)
# users_pkey; the user's refresh tokens go with it (ON DELETE CASCADE).
_DELETE_USER = text("DELETE FROM users WHERE id = :id")


async def delete_user(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    requested_at: datetime,
    email_hash: bytes,
    username_hash: bytes,
    names_free_at: datetime,
    sessions: list[uuid.UUID],
) -> None:
    """The account gone, and its deletion on record (with its name holds and sessions to end)."""
    await conn.execute(
        _INSERT_DELETION,
        {
            "user_id": user_id,
            "requested_at": requested_at,
            "email_hash": email_hash,
            "username_hash": username_hash,
            "names_free_at": names_free_at,
            "sessions": sessions,
        },
    )
    await conn.execute(_DELETE_USER, {"id": user_id})


def email_hash(email: str) -> bytes:
    """How a deleted account's email is held (never in clear: no personal data stays)."""
    return hashlib.sha256(email.strip().lower().encode()).digest()


def username_hash(username: str) -> bytes:
    return hashlib.sha256(username.strip().lower().encode()).digest()


# account_deletions_email_idx / account_deletions_username_idx: a deleted account's names are
# held until names_free_at.
_HELD_NAMES = text(
    "SELECT bool_or(email_hash = :email_hash) AS email, bool_or(username_hash = :username_hash) AS username "
    "FROM account_deletions WHERE (email_hash = :email_hash OR username_hash = :username_hash) "
    "AND names_free_at > now()"
)


async def held_names(conn: AsyncConnection, *, email_hash: bytes, username_hash: bytes) -> tuple[bool, bool]:
    """Whether the email, the username (as hashes) belong to an account deleted less than 30
    days ago."""
    row = (await conn.execute(_HELD_NAMES, {"email_hash": email_hash, "username_hash": username_hash})).one()
    return bool(row.email), bool(row.username)


_DELETION = text(f"SELECT {DELETION_COLUMNS} FROM account_deletions WHERE user_id = :id")


async def deletion(conn: AsyncConnection, user_id: uuid.UUID) -> DeletionRow | None:
    row = (await conn.execute(_DELETION, {"id": user_id})).first()
    return DeletionRow(**row._mapping) if row else None


_SESSIONS_ENDED = text(
    "UPDATE account_deletions SET sessions_ended_at = now() WHERE user_id = :id AND sessions_ended_at IS NULL"
)


async def mark_sessions_ended(conn: AsyncConnection, user_id: uuid.UUID) -> bool:
    return bool((await conn.execute(_SESSIONS_ENDED, {"id": user_id})).rowcount)


# A report counts once: a second delivery of the same one changes nothing.
_ERASED = {
    "first": text(
        "UPDATE account_deletions SET erased_first = array_append(erased_first, :service) "
        "WHERE user_id = :id AND NOT (:service = ANY(erased_first))"
    ),
    "final": text(
        "UPDATE account_deletions SET erased_final = array_append(erased_final, :service) "
        "WHERE user_id = :id AND NOT (:service = ANY(erased_final))"
    ),
}


async def mark_erased(conn: AsyncConnection, user_id: uuid.UUID, service: str, pass_: str) -> bool:
    return bool((await conn.execute(_ERASED[pass_], {"id": user_id, "service": service})).rowcount)


# The one statement that completes a deletion: `completed_at IS NULL` makes it happen once, however
# many reports arrive together (the row's lock orders them).
_COMPLETE = text(
    "UPDATE account_deletions SET completed_at = now() WHERE user_id = :id AND completed_at IS NULL "
    "AND sessions_ended_at IS NOT NULL AND erased_final @> CAST(:participants AS text[]) "
    "RETURNING completed_at - requested_at AS took"
)


async def complete_if_done(conn: AsyncConnection, user_id: uuid.UUID, participants: list[str]) -> float | None:
    """Marks the deletion completed if every step is done: the seconds it took, None when it is not
    done yet (or was completed before)."""
    row = (await conn.execute(_COMPLETE, {"id": user_id, "participants": participants})).first()
    return row.took.total_seconds() if row else None


# account_deletions_unfinished_idx.
UNFINISHED = text("SELECT count(*) AS n, min(requested_at) AS oldest FROM account_deletions WHERE completed_at IS NULL")


def account_deletions_purge() -> Target:
    """Completed deletions whose names are free again: nothing left to hold or to show."""
    return rows_where("account_deletions", "completed_at IS NOT NULL AND names_free_at < now()", {})
