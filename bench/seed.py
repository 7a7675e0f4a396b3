"""Seeding SPEC §11's volume in SQL (generate_series, INSERT … SELECT): seconds, never row by row.

The data set is, row for row and id for id, the one SPEC §11's side-by-side benchmark seeds, so
`make bench` figures compare with side-by-side's and seeding a database that benchmark already
seeded changes nothing. For `users` = N (10,000 in
SPEC §11):

    users        pf1 … pfN, email pf<i>@perf.example, password SEED_PASSWORD (argon2)     auth
    connections  user i ↔ i+1 … i+5 (mod N): 5·N pairs, so 10 connections per user       recipients
    recipients   one linked recipient per side of each connection (what accepting a
                 request creates): 10·N                                                    recipients
    capsules     20·N; capsule j goes to r = 1 + ⌊N·u^1.5⌋ (u from md5: skewed towards
                 low i), from one of r's 10 connections, through the sender's recipient
                 row for r; 40 % sealed (unlock in 7 … 727 days), 30 % ready, 30 % opened
                 (both unlocked 1 h … 366 days ago), 3 % anonymous                         capsules

Every value comes from md5 of a salt and the row number (`h(salt, j)` in [0, 1)), so two seeds of
the same N are identical whatever the machine. Ids are UUIDv7-shaped (like the services' uuid7()):
a fixed time base + a row number, then md5 bits. Past-due capsules carry `unlocked_event_at`, so a
running unlocker does not announce 60 % of the seeded letters on the Redis stream.

Each service keeps its own database: `seed_auth`, `seed_recipients` and `seed_capsules` each take
a connection to one of them and write only its tables, in one transaction, skipped when the last
row it would write is already there. The generators are session-local (pg_temp) functions: nothing
is left behind in the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from argon2 import PasswordHasher

SEED_PASSWORD = "seeded password"
# Capsules per user (200,000 for 10,000 users in SPEC §11) and connections on each side of a user.
CAPSULES_PER_USER = 20
NEIGHBOURS = 5


@dataclass(frozen=True)
class Volume:
    """How much to seed: everything follows from the number of users."""

    users: int = 10_000

    def __post_init__(self) -> None:
        # Below 2·NEIGHBOURS + 1 users, i+k and i-k' would meet and pairs would repeat.
        if self.users < 2 * NEIGHBOURS + 1:
            raise ValueError(f"at least {2 * NEIGHBOURS + 1} users are needed, not {self.users}")

    @property
    def connections(self) -> int:
        return NEIGHBOURS * self.users

    @property
    def recipients(self) -> int:
        return 2 * self.connections

    @property
    def capsules(self) -> int:
        return CAPSULES_PER_USER * self.users


# Each seeding transaction's settings: no JIT (compiling these one-off statements costs seconds and
# saves nothing), room to hash and sort in memory, no wait for the WAL flush at commit.
SESSION = """
SET LOCAL jit = off;
SET LOCAL work_mem = '64MB';
SET LOCAL synchronous_commit = off;
"""

# The generators, created in pg_temp inside each seeding transaction. Every seeded value is a
# function of (salt, row number) only. They are declared STABLE, not IMMUTABLE, on purpose: their
# bodies use `text || bigint` and timestamptz arithmetic, which are STABLE, and Postgres inlines a
# SQL function only when it is declared no stricter than its body. Inlined, a row costs a few µs;
# called one by one through the SQL-function executor, ~100 µs (minutes for 200,000 capsules).
GENERATORS = """
CREATE OR REPLACE FUNCTION pg_temp.h(salt text, j bigint) RETURNS float8 LANGUAGE sql STABLE
AS $$ SELECT (('x' || substr(md5(salt || ':' || j), 1, 8))::bit(32)::bigint)::float8 / 4294967296.0 $$;

-- UUIDv7 shape: 48-bit time field = 2025-01-01T00:00:00Z in ms + n, version 7, variant 8, md5 bits.
-- n is the row number, plus 1,000,000 for connections and 2,000,000 for recipients (ids of
-- different tables never collide).
CREATE OR REPLACE FUNCTION pg_temp.id7(seed text, n bigint) RETURNS uuid LANGUAGE sql STABLE
AS $$ SELECT (lpad(to_hex(1735689600000 + n), 12, '0') || '7' || substr(m, 1, 3) || '8' || substr(m, 4, 15))::uuid
      FROM md5(seed) AS m $$;

CREATE OR REPLACE FUNCTION pg_temp.user_id(i int) RETURNS uuid LANGUAGE sql STABLE
AS $$ SELECT pg_temp.id7('user:' || i, i) $$;

CREATE OR REPLACE FUNCTION pg_temp.first_name(i int) RETURNS text LANGUAGE sql STABLE
AS $$ SELECT (ARRAY['Anna','Bruno','Chloe','Dmitri','Elif','Farah','Goran','Hana'])[1 + i % 8] $$;
CREATE OR REPLACE FUNCTION pg_temp.last_name(i int) RETURNS text LANGUAGE sql STABLE
AS $$ SELECT (ARRAY['Martin','Nguyen','Okafor','Petrov','Quinn','Rossi','Sato','Tanaka'])[1 + (i / 8) % 8] $$;
CREATE OR REPLACE FUNCTION pg_temp.country(i int) RETURNS text LANGUAGE sql STABLE
AS $$ SELECT (ARRAY['FR','DE','JP','US','BR','NG','IN','GB'])[1 + (i / 64) % 8] $$;

-- Connection (a, b = a + k mod n), k = 1..5: each unordered pair once. c = a·10 + k numbers it.
CREATE OR REPLACE FUNCTION pg_temp.pairs(n int) RETURNS TABLE (a int, b int, k int) LANGUAGE sql STABLE
AS $$ SELECT i, 1 + (i - 1 + k) % n, k FROM generate_series(1, n) AS i, generate_series(1, 5) AS k $$;

-- The recipient row `owner` keeps for `linked` (both ends of one pair share its number).
CREATE OR REPLACE FUNCTION pg_temp.recipient_id(owner int, linked int, n int) RETURNS uuid LANGUAGE sql STABLE
AS $$ SELECT pg_temp.id7('recipient:' || owner || ':' || linked,
                         2000000 + CASE WHEN (linked - owner + n) % n BETWEEN 1 AND 5
                                        THEN owner * 10 + (linked - owner + n) % n
                                        ELSE linked * 10 + (owner - linked + n) % n END) $$;

-- Capsule j: receiver r (skewed), sender s (one of r's connections), status kind and times.
CREATE OR REPLACE FUNCTION pg_temp.capsule_plan(n int, m int, now0 timestamptz)
RETURNS TABLE (j int, r int, s int, kind text, unlocks_at timestamptz, created_at timestamptz,
               opened_at timestamptz, anonymous boolean, title text, body text)
LANGUAGE sql STABLE AS $$
  WITH base AS (
    SELECT j,
           1 + least(n - 1, floor(n * pg_temp.h('r', j) ^ 1.5)::int) AS r,
           (ARRAY[-5,-4,-3,-2,-1,1,2,3,4,5])[1 + floor(10 * pg_temp.h('s', j))::int] AS off,
           CASE WHEN pg_temp.h('t', j) < 0.40 THEN 'sealed'
                WHEN pg_temp.h('t', j) < 0.70 THEN 'ready' ELSE 'opened' END AS kind,
           pg_temp.h('m', j) AS mag
      FROM generate_series(1, m) AS j
  ), timed AS (
    SELECT b.*,
           CASE WHEN kind = 'sealed' THEN now0 + interval '7 days' + mag * interval '720 days'
                ELSE now0 - interval '1 hour' - mag * interval '365 days' END AS unlocks_at
      FROM base AS b
  )
  SELECT j, r, 1 + (r - 1 + off + n) % n, kind, unlocks_at,
         least(unlocks_at, now0) - interval '1 day' - pg_temp.h('c', j) * interval '60 days',
         CASE WHEN kind = 'opened'
              THEN unlocks_at + (now0 - interval '10 minutes' - unlocks_at) * pg_temp.h('o', j) END,
         pg_temp.h('a', j) < 0.03,
         'Letter ' || j,
         'Dear pf' || r || ', '
           || repeat('this letter waited for the right moment to be read. ', 2 + floor(10 * pg_temp.h('b', j))::int)
    FROM timed
$$;
"""

INSERT_USERS = """
INSERT INTO users (id, email, username, password_hash, first_name, last_name, country, created_at, updated_at)
SELECT pg_temp.user_id(i), 'pf' || i || '@perf.example', 'pf' || i, $2,
       pg_temp.first_name(i), pg_temp.last_name(i), pg_temp.country(i),
       $3::timestamptz - interval '400 days' + i * interval '1 second',
       $3::timestamptz - interval '400 days' + i * interval '1 second'
  FROM generate_series(1, $1::int) AS i
ON CONFLICT DO NOTHING
"""

INSERT_CONNECTIONS = """
INSERT INTO connections (id, user_low, user_high, created_at)
SELECT pg_temp.id7('connection:' || a || ':' || k, 1000000 + a * 10 + k),
       least(pg_temp.user_id(a), pg_temp.user_id(b)), greatest(pg_temp.user_id(a), pg_temp.user_id(b)),
       $2::timestamptz - interval '390 days' + pg_temp.h('conn', a * 10 + k) * interval '380 days'
  FROM pg_temp.pairs($1::int)
ON CONFLICT DO NOTHING
"""

# Both sides of every pair; the b → a side last, so the last row is (owner b of the last pair, linked n).
INSERT_RECIPIENTS = """
INSERT INTO recipients (id, owner, name, email, linked_user, created_at, updated_at)
SELECT pg_temp.recipient_id(owner, linked, $1::int), pg_temp.user_id(owner),
       pg_temp.first_name(linked) || ' ' || pg_temp.last_name(linked), NULL, pg_temp.user_id(linked), at, at
  FROM (SELECT a AS owner, b AS linked, a * 10 + k AS c, 1 AS side FROM pg_temp.pairs($1::int)
        UNION ALL
        SELECT b, a, a * 10 + k, 2 FROM pg_temp.pairs($1::int)) AS sides,
       LATERAL (SELECT $2::timestamptz - interval '390 days' + pg_temp.h('conn', c) * interval '380 days' AS at) AS t
ON CONFLICT DO NOTHING
"""

INSERT_CAPSULES = """
INSERT INTO capsules (id, sender, recipient_id, recipient_user, title, body, theme_id, unlocks_at, anonymous,
                      reveal_delay_seconds, created_at, updated_at, opened_at, deleted_at, unlocked_event_at)
SELECT pg_temp.id7('capsule:' || j, j), pg_temp.user_id(s), pg_temp.recipient_id(s, r, $1::int),
       pg_temp.user_id(r), title, body, NULL, unlocks_at, anonymous, 21600,
       created_at, coalesce(opened_at, created_at), opened_at, NULL,
       CASE WHEN unlocks_at <= $3::timestamptz THEN unlocks_at END
  FROM pg_temp.capsule_plan($1::int, $2::int, $3::timestamptz)
ON CONFLICT DO NOTHING
"""


def password_hash() -> str:
    """An argon2 hash of SEED_PASSWORD, light (seeding 10,000 users must not take minutes; the
    auth service verifies any argon2 parameters)."""
    return PasswordHasher(time_cost=1, memory_cost=8192).hash(SEED_PASSWORD)


async def _has_row(conn: asyncpg.Connection, table: str, id_expression: str, *args: object) -> bool:
    """Whether `table` holds the row whose id is `id_expression` (the generators must exist)."""
    return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE id = {id_expression})", *args))


async def seed_auth(conn: asyncpg.Connection, volume: Volume, now: datetime) -> bool:
    """Users pf1 … pfN in the auth database. False when they were already there."""
    async with conn.transaction():
        await conn.execute(SESSION + GENERATORS)
        if await _has_row(conn, "users", "pg_temp.user_id($1::int)", volume.users):
            return False
        await conn.execute(INSERT_USERS, volume.users, password_hash(), now)
    await conn.execute("ANALYZE users")
    return True


async def seed_recipients(conn: asyncpg.Connection, volume: Volume, now: datetime) -> bool:
    """Connections and linked recipients in the recipients database. False when already there."""
    n = volume.users
    last_owner = 1 + (n - 1 + NEIGHBOURS) % n  # the b end of the last pair (n, n + 5)
    async with conn.transaction():
        await conn.execute(SESSION + GENERATORS)
        if await _has_row(conn, "recipients", "pg_temp.recipient_id($1::int, $2::int, $2::int)", last_owner, n):
            return False
        await conn.execute(INSERT_CONNECTIONS, n, now)
        await conn.execute(INSERT_RECIPIENTS, n, now)
    await conn.execute("ANALYZE connections")
    await conn.execute("ANALYZE recipients")
    return True


async def seed_capsules(conn: asyncpg.Connection, volume: Volume, now: datetime) -> bool:
    """Capsules in the capsules database. False when already there."""
    async with conn.transaction():
        await conn.execute(SESSION + GENERATORS)
        if await _has_row(conn, "capsules", "pg_temp.id7('capsule:' || $1::int, $1::int)", volume.capsules):
            return False
        await conn.execute(INSERT_CAPSULES, volume.users, volume.capsules, now)
    await conn.execute("ANALYZE capsules")
    return True


SEEDERS = {"auth": seed_auth, "recipients": seed_recipients, "capsules": seed_capsules}


async def seed_all(dsns: Mapping[str, str], volume: Volume, now: datetime | None = None) -> dict[str, bool]:
    """Seed each service's database (asyncpg DSNs by service name), the three in parallel.
    Returns service → whether rows were written (False: already seeded)."""
    now = now or datetime.now(UTC)

    async def one(service: str) -> bool:
        conn = await asyncpg.connect(asyncpg_dsn(dsns[service]))
        try:
            return await SEEDERS[service](conn, volume, now)
        finally:
            await conn.close()

    names = [name for name in SEEDERS if name in dsns]
    done = await asyncio.gather(*(one(name) for name in names))
    return dict(zip(names, done, strict=True))


def seed_and_describe(dsns: Mapping[str, str], volume: Volume) -> str:
    """seed_all from synchronous code; says what was done and how long it took."""
    started = time.monotonic()
    written = asyncio.run(seed_all(dsns, volume))
    what = ", ".join(f"{service} {'seeded' if done else 'already there'}" for service, done in written.items())
    return f"data ({volume.users:,} users): {what} in {time.monotonic() - started:.1f} s"


async def seed_users(conn: asyncpg.Connection, count: int) -> None:
    """Only the users (bench.getme, bench.ratelimit: GetMe needs no other data)."""
    await seed_auth(conn, Volume(users=count), datetime.now(UTC))


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy URL (postgresql+asyncpg://…) as asyncpg wants it; a plain DSN unchanged."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
