"""The limiter's algorithm (controlled clock), its Redis script, client IPs and ETags, without a mesh."""

from __future__ import annotations

import uuid

import pytest

from gateway.clientip import ClientIpResolver
from gateway.httpcache import if_none_match_matches, strong_etag
from gateway.ratelimit import FALLBACK_DECISIONS, REDIS_UP, Check, Limit, LocalGcra, RateLimiter
from gateway.settings import Settings
from launcher.infra import Infra
from launcher.process import free_port
from services.common.addresses import address_key as rate_limit_key
from services.common.addresses import parse_networks
from tests.metrics import sample


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LIMIT = Limit("ip", 20, 60.0)


def test_gcra_admits_the_burst_then_one_per_emission_interval() -> None:
    clock = Clock()
    gcra = LocalGcra(clock)
    check = [Check("ip:a", LIMIT)]
    decisions = [gcra.decide(check) for _ in range(21)]
    assert [d.allowed for d in decisions] == [True] * 20 + [False]
    assert [d.remaining for d in decisions[:3]] == [19, 18, 17]
    refused = decisions[-1]
    assert refused.remaining == 0 and refused.retry_after_seconds == pytest.approx(3.0)
    assert dict(refused.headers())[b"retry-after"] == b"3"
    assert dict(refused.headers())[b"ratelimit-reset"] == b"60"
    clock.now += 2.9
    assert not gcra.decide(check).allowed
    clock.now += 0.1
    assert gcra.decide(check).allowed
    assert not gcra.decide(check).allowed
    assert gcra.decide([Check("ip:b", LIMIT)]).allowed  # keys are independent


def test_gcra_never_lets_twice_the_limit_through_around_a_boundary() -> None:
    """A client hammering every 10 ms for 5 periods. GCRA's bound: any interval of length t admits
    at most the burst plus t / T. So no short interval ever sees more than the limit (+1), where a
    fixed window admits 2x the limit within moments around a boundary, and the sustained rate is
    exactly the limit per period."""
    clock = Clock()
    gcra = LocalGcra(clock)
    admitted: list[float] = []
    for _ in range(30_000):
        if gcra.decide([Check("ip:a", LIMIT)]).allowed:
            admitted.append(clock.now)
        clock.now += 0.01
    emission = LIMIT.period_seconds / LIMIT.count
    for length in (1.0, 5.0, 60.0):
        for i, start in enumerate(admitted):
            in_window = sum(1 for t in admitted[i : i + 200] if t < start + length - 1e-9)
            assert in_window <= LIMIT.count + length / emission
    assert sum(1 for t in admitted if t < 1001.0) == 20  # within the first second: the burst only
    steady = [t for t in admitted if t >= 1060.0]  # after the burst: one per emission interval
    assert len(steady) == pytest.approx((admitted[-1] - 1060.0) / emission, abs=1)


def test_a_decision_over_two_keys_spends_both_or_neither() -> None:
    clock = Clock()
    gcra = LocalGcra(clock)
    login = Limit("login", 2, 60.0)
    ip = Limit("ip", 3, 60.0)
    both = [Check("ip:a", ip), Check("login:a:x", login)]
    assert gcra.decide(both).allowed
    assert gcra.decide(both).allowed
    refused = gcra.decide(both)
    assert not refused.allowed and refused.limit is login
    # The refused attempt did not spend the IP budget: one more other call passes.
    assert gcra.decide([Check("ip:a", ip)]).allowed
    assert not gcra.decide([Check("ip:a", ip)]).allowed


async def test_the_redis_script_agrees_with_the_algorithm(infra: Infra) -> None:
    """The machine's Redis, keys under a unique prefix that expire within a minute."""
    limiter = RateLimiter(infra.redis_url, f"test:{uuid.uuid4().hex}:", timeout_seconds=2.0)
    try:
        check = [Check("ip:a", Limit("ip", 5, 60.0))]
        decisions = [await limiter.decide(check) for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
        assert 11.0 <= decisions[-1].retry_after_seconds <= 12.0
        assert 59.0 <= decisions[-1].reset_seconds <= 60.0
        login = [Check("ip:b", Limit("ip", 5, 60.0)), Check("login:b:x", Limit("login", 1, 60.0))]
        assert (await limiter.decide(login)).allowed
        refused = await limiter.decide(login)
        assert not refused.allowed and refused.limit.name == "login"
        assert (await limiter.decide(login[:1])).remaining == 3  # the refusal spent nothing
        assert limiter.global_mode
    finally:
        await limiter.close()


async def test_an_unreachable_redis_means_local_decisions_counted_in_the_metric() -> None:
    clock = Clock()
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", "x:", timeout_seconds=0.2, clock=clock)
    before = sample(FALLBACK_DECISIONS)
    try:
        check = [Check("ip:a", Limit("ip", 2, 60.0))]
        assert [(await limiter.decide(check)).allowed for _ in range(3)] == [True, True, False]
        assert not limiter.global_mode and sample(REDIS_UP) == 0
        assert sample(FALLBACK_DECISIONS) - before == 3
    finally:
        await limiter.close()
        REDIS_UP.set(1)


def scope(peer: str, *forwarded: str) -> dict[str, object]:
    return {"client": (peer, 5555), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_x_forwarded_for_is_read_only_from_a_trusted_proxy() -> None:
    untrusting = ClientIpResolver()
    assert untrusting.resolve(scope("127.0.0.1", "9.9.9.9")) == "127.0.0.1"
    trusting = ClientIpResolver(parse_networks("10.0.0.0/8, 127.0.0.1"))
    assert trusting.resolve(scope("203.0.113.5", "9.9.9.9")) == "203.0.113.5"  # peer not trusted
    assert trusting.resolve(scope("127.0.0.1", "9.9.9.9")) == "9.9.9.9"
    # The client's own forged entries stay left of the address the proxy appended.
    assert trusting.resolve(scope("127.0.0.1", "1.1.1.1, 2.2.2.2", "198.51.100.7, 10.1.2.3")) == "198.51.100.7"
    assert trusting.resolve(scope("127.0.0.1", "garbage, 198.51.100.7")) == "198.51.100.7"
    assert trusting.resolve(scope("127.0.0.1", "10.0.0.1, 10.0.0.2")) == "10.0.0.1"  # all trusted: left-most
    assert trusting.resolve(scope("127.0.0.1")) == "127.0.0.1"
    assert trusting.resolve(scope("127.0.0.1", "not-an-ip")) == "127.0.0.1"


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    assert rate_limit_key("2001:db8:1:2:aaaa::1") == rate_limit_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert rate_limit_key("2001:db8:1:3::1") != rate_limit_key("2001:db8:1:2::1")
    assert rate_limit_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert rate_limit_key("192.0.2.1") == "192.0.2.1"


def test_settings_read_limits_and_reject_nonsense() -> None:
    settings = Settings.from_env({"GATEWAY_RATELIMIT_IP": "20/3600", "GATEWAY_RATELIMIT_LOGIN": "5"})
    assert settings.ratelimit_ip == (20, 3600.0) and settings.ratelimit_login == (5, 60.0)
    assert settings.ratelimit_user == (600, 60.0) and settings.ratelimit_enabled
    assert not Settings.from_env({"GATEWAY_RATELIMIT_ENABLED": "0"}).ratelimit_enabled
    with pytest.raises(SystemExit):
        Settings.from_env({"GATEWAY_RATELIMIT_IP": "many"})
    with pytest.raises(SystemExit):
        Settings.from_env({"GATEWAY_RATELIMIT_USER": "0/60"})
    with pytest.raises(SystemExit):
        parse_networks("10.0.0.0/33")


def test_etags_are_strong_hashes_and_if_none_match_compares_weakly() -> None:
    tag = strong_etag(b'{"a":1}')
    assert tag == strong_etag(b'{"a":1}') and tag != strong_etag(b'{"a":2}')
    assert tag.startswith(b'"') and tag.endswith(b'"') and not tag.startswith(b"W/")
    assert if_none_match_matches(tag, tag)
    assert if_none_match_matches(b'"other", W/' + tag, tag)
    assert if_none_match_matches(b"*", tag)
    assert not if_none_match_matches(b'"other"', tag)
