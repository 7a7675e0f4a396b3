"""Leased cells (ratelimit.py, "Leases"): limiters in this process against a real Redis, each with
its own controlled clock for lease lifetimes (Redis keeps its own clock for the buckets). Periods
are long (hours) so that the refill during a test is nil and the counts are exact.

The machine's Redis with a unique key prefix, except where a test freezes or counts commands of a
private redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Sequence

import pytest
import redis

from gateway.ratelimit import (
    FALLBACK_DECISIONS,
    LOCAL_DECISIONS,
    REDIS_CALLS,
    REDIS_UP,
    UNUSED_CELLS,
    Check,
    Decision,
    Limit,
    RateLimiter,
)
from gateway.settings import Settings
from launcher.infra import Infra
from tests.metrics import sample
from tests.ratelimit.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def calls() -> float:
    return sample(REDIS_CALLS)


def limiter(
    url: str, prefix: str, clock: Clock | None = None, *, lease_max: int = 32, lease_seconds: float = 1.0
) -> RateLimiter:
    return RateLimiter(
        url, prefix, timeout_seconds=2.0, clock=clock or Clock(), lease_max=lease_max, lease_seconds=lease_seconds
    )


async def closing(*limiters: RateLimiter) -> None:
    for one in limiters:
        await one.close()


async def run(limiter: RateLimiter, checks: Sequence[Check], n: int) -> tuple[list[Decision], list[int]]:
    """n decisions in a row: the decisions, and the (1-based) ones that made a Redis call."""
    decisions, asked = [], []
    for i in range(1, n + 1):
        before = calls()
        decisions.append(await limiter.decide(checks))
        if calls() > before:
            asked.append(i)
    return decisions, asked


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


async def test_a_hot_key_leases_1_2_4_8_16_then_32_cells_and_remaining_stays_exact(infra: Infra, prefix: str) -> None:
    one = limiter(infra.redis_url, prefix)
    try:
        check = [Check("user:a", Limit("user", 100_000, 3_600_000.0))]  # a cell refills in 36 s
        decisions, asked = await run(one, check, 200)
        assert asked == [1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192]
        assert all(d.allowed for d in decisions)
        # What Redis left after the grant plus the cells of it still unused here: exactly the bucket.
        assert [d.remaining for d in decisions] == [100_000 - i for i in range(1, 201)]
        # RateLimit-Reset counts the whole lease as spent: the cells charged up to the next round trip.
        charged = [min(n for n in [*asked, 224] if n > i) - 1 for i in range(1, 201)]
        assert [round(d.reset_seconds / 36) for d in decisions] == charged
    finally:
        await closing(one)


async def test_the_last_cells_of_a_bucket_go_one_round_trip_each(infra: Infra, prefix: str) -> None:
    one = limiter(infra.redis_url, prefix)
    try:
        check = [Check("user:a", Limit("user", 64, 36_000.0))]
        decisions, asked = await run(one, check, 70)
        assert [d.allowed for d in decisions] == [True] * 64 + [False] * 6
        assert [d.remaining for d in decisions] == [*range(63, -1, -1), 0, 0, 0, 0, 0, 0]
        # Leases of at most a 16th of what is left: 64 // 16 = 4 > 3 > ... > 2, then 1 below 32 left.
        assert asked == [1, 2, 4, 7, 10, 13, 16, 19, 21, 23, 25, 27, 29, 31, 33, *range(35, 66)]
        # The refusal is remembered until its Retry-After: no round trip for the next ones.
        refused = decisions[-1]
        assert 562 <= refused.retry_after_seconds <= 563  # one emission interval, 36000 / 64
        assert dict(refused.headers())[b"retry-after"] == b"563"
    finally:
        await closing(one)


async def test_three_limiters_round_robin_admit_exactly_the_limit(infra: Infra, prefix: str) -> None:
    """One client spreading its calls over three gateways, as the mesh test does, with a limit
    large enough to lease: still exactly the limit, the first refusal exactly after it."""
    three = [limiter(infra.redis_url, prefix) for _ in range(3)]
    try:
        check = [Check("user:a", Limit("user", 640, 36_000.0))]
        before = calls()
        statuses = [(await three[i % 3].decide(check)).allowed for i in range(800)]
        assert statuses == [True] * 640 + [False] * 160
        assert calls() - before < 640 / 5
    finally:
        await closing(*three)


async def test_three_limiters_under_concurrent_load_never_admit_more_than_the_limit(infra: Infra, prefix: str) -> None:
    """Bursts of concurrent decisions on random limiters: renewals are shared (one per key and
    limiter in flight), and the cells charged in Redis bound what is admitted. The clocks stand
    still, so no lease expires and every cell charged is eventually used: exactly the limit."""
    three = [limiter(infra.redis_url, prefix) for _ in range(3)]
    try:
        check = [Check("user:a", Limit("user", 640, 36_000.0))]
        rng = random.Random(7)
        before = calls()
        admitted = 0
        for _ in range(40):
            burst = [three[rng.randrange(3)].decide(check) for _ in range(50)]
            admitted += sum(d.allowed for d in await asyncio.gather(*burst))
            assert admitted <= 640
        assert admitted == 640
        assert calls() - before < 2000 / 10
    finally:
        await closing(*three)


async def test_log_in_stays_exact_one_round_trip_per_attempt(infra: Infra, prefix: str) -> None:
    three = [limiter(infra.redis_url, prefix) for _ in range(3)]
    try:
        ip = Limit("ip", 6_400, 36_000.0)
        login = Limit("login", 10, 36_000.0)
        attempt = [Check("ip:a", ip), Check("login:a:x", login)]
        for one in three:  # the address is hot everywhere: leases of its cells on every limiter
            await run(one, [Check("ip:a", ip)], 40)
        before = calls()
        statuses = [(await three[i % 3].decide(attempt)).allowed for i in range(30)]
        assert statuses == [True] * 10 + [False] * 20
        assert calls() - before == 30  # never from a lease, never from a remembered refusal
        # All or none: the refused attempts spent nothing of the address's bucket.
        other = [Check("ip:b", Limit("ip", 100, 36_000.0)), Check("login:b:x", login)]
        assert [(await three[i % 3].decide(other)).allowed for i in range(15)] == [True] * 10 + [False] * 5
        exact = limiter(infra.redis_url, prefix, lease_max=1)
        assert (await exact.decide(other[:1])).remaining == 100 - 10 - 1
        await exact.close()
    finally:
        await closing(*three)


async def test_an_expired_lease_is_void_and_the_next_grant_fits_what_it_used(infra: Infra, prefix: str) -> None:
    clock = Clock()
    one = limiter(infra.redis_url, prefix, clock, lease_seconds=1.0)
    exact = limiter(infra.redis_url, prefix, lease_max=1)
    try:
        check = [Check("user:a", Limit("user", 640, 36_000.0))]
        _, asked = await run(one, check, 20)  # leases 1, 2, 4, 8, then 16 at the 16th: 11 left
        assert asked == [1, 2, 4, 8, 16]
        unused, before = sample(UNUSED_CELLS), calls()
        clock.now += 0.5
        assert (await one.decide(check)).allowed and calls() == before  # still in force
        clock.now += 0.5  # 1 s after the 16 were asked for: void
        _, asked = await run(one, check, 14)
        assert sample(UNUSED_CELLS) - unused == 10
        # It had used 6 of 16 in its lifetime: the next is 6 (then it doubles: hot again).
        assert asked == [1, 7]
        # Stranded cells stay spent for everyone else until they refill: 31 + 6 + 12 charged.
        assert (await exact.decide(check)).remaining == 640 - 49 - 1
        clock.now += 5.0  # not seen for long: cold again, a lease of 1
        _, asked = await run(one, check, 3)
        assert asked == [1, 2]
    finally:
        await closing(one, exact)


async def test_leasing_off_is_one_round_trip_per_decision(infra: Infra, prefix: str) -> None:
    one = limiter(infra.redis_url, prefix, lease_max=1)
    try:
        check = [Check("user:a", Limit("user", 100_000, 360_000.0))]
        decisions, asked = await run(one, check, 50)
        assert asked == list(range(1, 51)) and all(d.allowed for d in decisions)
    finally:
        await closing(one)



def evalsha_calls(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        stats = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0})
        return int(stats["calls"])
    finally:
        client.close()


async def test_redis_runs_one_script_per_32_decisions_of_a_hot_key(redis_server: RedisServer, prefix: str) -> None:
    """Counted by Redis itself (INFO commandstats), not only by the gateway's metric."""
    leased = limiter(redis_server.url, prefix)
    exact = limiter(redis_server.url, prefix, lease_max=1)
    try:
        check = [Check("user:a", Limit("user", 100_000, 360_000.0))]
        await exact.decide(check)  # loads the script (EVAL + NOSCRIPT retry)
        start = evalsha_calls(redis_server)
        await run(exact, check, 1000)
        per_request = evalsha_calls(redis_server) - start
        before = calls()
        await run(leased, [Check("user:b", check[0].limit)], 1000)
        leased_calls = evalsha_calls(redis_server) - start - per_request
        assert per_request == 1000
        assert leased_calls == calls() - before == 5 + len(range(32, 1001, 32))  # 1, 2, 4, 8, 16, then 32s
    finally:
        await closing(leased, exact)


async def test_leases_outlive_a_redis_outage_then_the_fallback_is_as_before(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    one = RateLimiter(redis_server.url, prefix, timeout_seconds=0.2, backoff_seconds=1.0, clock=clock)
    fallback, from_lease = sample(FALLBACK_DECISIONS), sample(LOCAL_DECISIONS, source="lease")
    caplog.set_level(logging.INFO, logger="gateway.ratelimit")
    try:
        check = [Check("user:a", Limit("user", 100, 36_000.0))]
        _, asked = await run(one, check, 16)  # leases 1, 2, 4, 5 (93 // 16), then 4 of 5 used
        assert asked == [1, 2, 4, 8, 13]
        redis_server.freeze()
        decisions, asked = await run(one, check, 2)  # the cell left, then Redis times out
        assert [d.allowed for d in decisions] == [True] * 2 and asked == [2]
        assert decisions[0].remaining == 100 - 17  # Redis's count, from the lease
        assert sample(LOCAL_DECISIONS, source="lease") - from_lease == 16 - 5 + 1
        assert sample(FALLBACK_DECISIONS) - fallback == 1
        assert not one.global_mode and sample(REDIS_UP) == 0
        # The per-instance fallback, a fresh bucket: the full limit, no round trip in the back-off.
        decisions, asked = await run(one, check, 100)
        assert [d.allowed for d in decisions] == [True] * 99 + [False] and asked == []
        assert sample(FALLBACK_DECISIONS) - fallback == 101
        redis_server.thaw()
        clock.now += 1.0  # the back-off is over: the next decision asks Redis again
        decision = await one.decide(check)
        # Redis's bucket (the fallback's is empty), with 17 spent, or 22 when Redis ran the call that
        # timed out once thawed (it was in its socket buffer): then a lease of 4, else of 5.
        assert decision.allowed and decision.remaining in (100 - 22 - 1, 100 - 17 - 1)
        assert one.global_mode and sample(REDIS_UP) == 1
        assert sample(FALLBACK_DECISIONS) - fallback == 101
        messages = [r.getMessage() for r in caplog.records if r.name == "gateway.ratelimit"]
        assert sum("redis unreachable" in m for m in messages) == 1
        assert sum("redis is back" in m for m in messages) == 1
    finally:
        redis_server.thaw()
        await one.close()
        REDIS_UP.set(1)


def test_lease_settings_have_defaults_and_reject_nonsense() -> None:
    defaults = Settings.from_env({})
    assert (defaults.ratelimit_lease_max, defaults.ratelimit_lease_seconds) == (32, 1.0)
    tuned = Settings.from_env({"GATEWAY_RATELIMIT_LEASE_MAX": "1", "GATEWAY_RATELIMIT_LEASE_SECONDS": "0.25"})
    assert (tuned.ratelimit_lease_max, tuned.ratelimit_lease_seconds) == (1, 0.25)
    for bad in ({"GATEWAY_RATELIMIT_LEASE_MAX": "0"}, {"GATEWAY_RATELIMIT_LEASE_MAX": "2.5"}):
        with pytest.raises(SystemExit):
            Settings.from_env(bad)
    with pytest.raises(SystemExit):
        Settings.from_env({"GATEWAY_RATELIMIT_LEASE_SECONDS": "-1"})
