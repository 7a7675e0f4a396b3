"""Seeding the volume of SPEC §11 fast, in SQL (generate_series), never row by row."""

from __future__ import annotations

import asyncpg
from argon2 import PasswordHasher

SEED_PASSWORD = "seeded password"


async def seed_users(conn: asyncpg.Connection, count: int) -> None:
    """`count` users named seed<i> (password SEED_PASSWORD), skipped if already there."""
    existing = await conn.fetchval("SELECT count(*) FROM users WHERE username LIKE 'seed%'")
    if existing >= count:
        return
    password_hash = PasswordHasher(time_cost=1, memory_cost=8192).hash(SEED_PASSWORD)
    await conn.execute(
        """
        INSERT INTO users (id, email, username, password_hash, first_name, last_name, country)
        SELECT uuidv7_like, 'seed' || i || '@example.com', 'seed' || i, $1,
               (ARRAY['anna','bruno','chloe','dmitri','elif','farah','goran','hana'])[1 + i % 8],
               (ARRAY['martin','nguyen','okafor','petrov','quinn','rossi','sato','tanaka'])[1 + i % 8] || i % 500,
               (ARRAY['FR','DE','JP','US','BR','NG','IN','GB'])[1 + i % 8]
          FROM generate_series($2::int, $3::int) AS i,
               LATERAL (SELECT gen_random_uuid() AS uuidv7_like) AS ids
        ON CONFLICT DO NOTHING
        """,
        password_hash,
        existing + 1,
        count,
    )
    await conn.execute("ANALYZE users")
