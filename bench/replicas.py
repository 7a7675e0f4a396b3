"""The streaming standby as the bench sees it: waiting until it has the seed, and counting where
the mesh's database reads ran.

Waiting. The seed is written in SQL straight into the primary's databases, so no write records
a WAL position for read-your-writes (services/common/replicas.py): as soon as an instance's
monitor finds the standby within its lag bound, reads of seeded users may go there, and right
after seeding the standby may not have replayed all of it yet. `wait_caught_up` waits (bounded)
until every standby the instances read from has replayed the primary's position taken after
seeding (pg_current_wal_lsn / pg_last_wal_replay_lsn), then until every instance's monitor
reports `db_replica_up` = 1 for each of its replicas. The standbys are those the instances name
in `db_replica_up{replica="host:port/database"}`: the same for an own mesh and an attached one.

Counting. `ReadCounts.take` sums `db_reads_total{target}` (target: "primary" or a replica's
host:port/database; every read counted where it ran) and `db_replica_fallbacks_total{reason}`
over the instances' /metrics; the difference of two is what happened in between — every read of
every instance, background jobs included.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from launcher.infra import PostgresServer

PRIMARY = "primary"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", re.MULTILINE)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in a Prometheus text exposition."""
    return [
        (dict(LABEL.findall(labels or "")), float(value))
        for sample, labels, value in SAMPLE.findall(text)
        if sample == name
    ]


def scrape(admin_address: str) -> str:
    """One instance's /metrics."""
    with urllib.request.urlopen(f"http://{admin_address}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _summed(texts: Iterable[str], name: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for text in texts:
        for labels, value in samples(text, name):
            key = labels.get(label, "")
            totals[key] = totals.get(key, 0.0) + value
    return totals


@dataclass(frozen=True)
class ReadCounts:
    """Database reads by target and replica fallbacks by reason, summed over instances."""

    reads: Mapping[str, float] = field(default_factory=dict)
    fallbacks: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> ReadCounts:
        texts = list(texts)
        return cls(_summed(texts, "db_reads_total", "target"), _summed(texts, "db_replica_fallbacks_total", "reason"))

    @classmethod
    def take(cls, admin_addresses: Iterable[str]) -> ReadCounts:
        return cls.from_texts(scrape(address) for address in admin_addresses)

    def __sub__(self, before: ReadCounts) -> ReadCounts:
        def minus(now: Mapping[str, float], then: Mapping[str, float]) -> dict[str, float]:
            return {key: now.get(key, 0.0) - then.get(key, 0.0) for key in sorted(set(now) | set(then))}

        return ReadCounts(minus(self.reads, before.reads), minus(self.fallbacks, before.fallbacks))

    @property
    def primary(self) -> float:
        return self.reads.get(PRIMARY, 0.0)

    @property
    def replica(self) -> float:
        """Reads on every replica together."""
        return sum(value for target, value in self.reads.items() if target != PRIMARY)

    @property
    def total(self) -> float:
        return self.primary + self.replica

    def replica_share_pct(self) -> float | None:
        """The replicas' share of the reads (%), None when there was no read to share."""
        return 100.0 * self.replica / self.total if self.total else None


# --- waiting for the standby ------------------------------------------------------------------------


def standby_servers(texts: Iterable[str], primary: PostgresServer) -> list[PostgresServer]:
    """The standby servers the instances read from (their `db_replica_up` labels, host:port/db),
    reached with the primary's user and password (a standby is a copy of the primary's cluster)."""
    found = set()
    for text in texts:
        for labels, _ in samples(text, "db_replica_up"):
            netloc = labels.get("replica", "").split("/", 1)[0]
            host, _, port = netloc.rpartition(":")
            if host and port.isdigit():
                found.add((host, int(port)))
    return [PostgresServer(host, port, primary.user, primary.password) for host, port in sorted(found)]


def replicas_down(texts: Mapping[str, str]) -> list[str]:
    """`address replica` for every replica an instance does not report up (db_replica_up != 1)."""
    return [
        f"{address} {labels.get('replica', '?')}"
        for address, text in texts.items()
        for labels, value in samples(text, "db_replica_up")
        if value != 1
    ]


class CatchUpTimeout(SystemExit):
    pass


def wait_caught_up(
    primary: PostgresServer,
    admin_addresses: list[str],
    *,
    timeout: float,
    log: Callable[[str], None],
    poll: float = 0.2,
) -> list[PostgresServer]:
    """Return the standbys once every standby the instances read from has replayed everything the primary
    wrote so far and every instance reports each of its replicas up; raise CatchUpTimeout (exit
    with a message) after `timeout` seconds. Without a standby: returns [] at once."""
    deadline = time.monotonic() + timeout
    servers = standby_servers((scrape(a) for a in admin_addresses), primary)
    if not servers:
        log("no standby in the mesh: every read runs on the primary")
        return []
    started = time.monotonic()
    position = asyncio.run(replayed(primary, servers, deadline=deadline, poll=poll))
    log(
        f"standby {', '.join(f'{s.host}:{s.port}' for s in servers)} replayed the primary's {position} "
        f"({time.monotonic() - started:.1f} s)"
    )
    while True:
        down = replicas_down({a: scrape(a) for a in admin_addresses})
        if not down:
            break
        if time.monotonic() >= deadline:
            raise CatchUpTimeout(f"replicas not reported up (db_replica_up != 1) after {timeout:.0f} s: {down}")
        time.sleep(poll)
    log(f"every instance reports its replicas up ({time.monotonic() - started:.1f} s in all)")
    return servers


async def replayed(
    primary: PostgresServer, servers: Sequence[PostgresServer], *, deadline: float, poll: float = 0.05
) -> str:
    """The primary's current WAL position, once every server has replayed it; CatchUpTimeout at
    `deadline` (time.monotonic()). Also what `make seed` and the tests that write rows straight
    into a database wait on (tests/replica.py)."""
    conn = await asyncpg.connect(primary.dsn("postgres"), timeout=10)
    try:
        position = str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
    finally:
        await conn.close()
    for server in servers:
        standby = await asyncpg.connect(server.dsn("postgres"), timeout=10)
        try:
            while True:
                row = await standby.fetchrow(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false) AS done,"
                    " pg_last_wal_replay_lsn()::text AS at",
                    position,
                )
                assert row is not None
                if row["done"]:
                    break
                if time.monotonic() >= deadline:
                    raise CatchUpTimeout(
                        f"standby {server.host}:{server.port} has replayed up to {row['at']}, not the "
                        f"primary's {position}, in the time allowed (see its log; POSTGRES_REPLICA=0 runs "
                        "without it)"
                    )
                await asyncio.sleep(poll)
        finally:
            await standby.close()
    return position
