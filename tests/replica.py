"""Tests that write rows with SQL straight into a service's database bypass the service's
read-your-writes (services/common/replicas.py): its reads of those rows may go to the standby
before it replayed them. `replayed(infra)` waits until it has."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from launcher.infra import Infra


async def replayed(infra: Infra, within: float = 15.0) -> None:
    """Return once the standby (if any) has replayed everything the primary wrote until now."""
    if infra.replica is None:
        return
    primary = await asyncpg.connect(infra.postgres.dsn("postgres"))
    try:
        position = await primary.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await primary.close()
    standby = await asyncpg.connect(infra.replica.dsn("postgres"))
    try:
        deadline = time.monotonic() + within
        while not await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", position):
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby has not replayed {position} within {within:.0f} s")
            await asyncio.sleep(0.01)
    finally:
        await standby.close()
