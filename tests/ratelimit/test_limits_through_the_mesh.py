"""Rate limiting through real gateway processes in front of the session mesh, sharing its Redis.

Windows are long (per hour) so that the refill during a test is nil and no timing matters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from launcher.stack import Stack
from tests.auth.test_auth_http import assert_problem, bearer, sign_up
from tests.ratelimit.gateways import spawn_gateways

pytestmark = pytest.mark.slow(14)  # scheduled first: see tests/conftest.py


def username() -> str:
    return "rl" + uuid.uuid4().hex[:12]


async def test_three_gateways_admit_one_clients_limit_once(stack: Stack) -> None:
    gateways = spawn_gateways(stack, ["rl-a", "rl-b", "rl-c"], GATEWAY_RATELIMIT_IP="20/3600")
    try:
        clients = [httpx.AsyncClient(base_url=url, timeout=30.0) for url, _ in gateways]
        statuses: list[int] = []
        refused: list[httpx.Response] = []
        for i in range(60):  # round-robin: a, b, c, a, ...
            response = await clients[i % 3].get(f"/v1/usernames/{username()}")
            statuses.append(response.status_code)
            if response.status_code == 200:
                assert response.headers["ratelimit-limit"] == "20"
                assert int(response.headers["ratelimit-remaining"]) == 19 - i
            else:
                refused.append(response)
        assert set(statuses) <= {200, 429}
        assert abs(statuses.count(200) - 20) <= 1, statuses
        assert statuses[:20] == [200] * 20
        last = refused[-1]
        assert_problem(last, 429, "RATE_LIMITED")
        assert int(last.headers["retry-after"]) >= 1
        assert last.headers["ratelimit-limit"] == "20" and last.headers["ratelimit-remaining"] == "0"
        assert 0 < int(last.headers["ratelimit-reset"]) <= 3600
        assert last.headers["cache-control"] == "no-store"
        # Operational routes are exempt; unknown paths are not transcoded calls.
        for client in clients:
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                response = await client.get(path)
                assert response.status_code == 200, path
                assert "ratelimit-limit" not in response.headers
            assert (await client.get("/v1/nothing-here")).status_code == 404
        # All three decided globally: no fallback decision anywhere.
        for client in clients:
            metrics = (await client.get("/metrics")).text
            assert "gateway_ratelimit_redis_up 1.0" in metrics
            assert "gateway_ratelimit_fallback_total 0.0" in metrics
        for client in clients:
            await client.aclose()
    finally:
        for _, process in gateways:
            process.stop(10)


@pytest.fixture(scope="module")
def proxied(stack: Stack) -> Iterator[dict[str, str]]:
    """Two gateways sharing limits and keys: `direct` trusts no proxy, `behind` trusts 127.0.0.1
    (as if an edge proxy on the same host forwarded to it)."""
    limits = {
        "GATEWAY_RATELIMIT_IP": "5/3600",
        "GATEWAY_RATELIMIT_USER": "3/3600",
        "GATEWAY_RATELIMIT_LOGIN": "2/3600",
    }
    prefix = f"{stack.cache_prefix}rl{uuid.uuid4().hex[:8]}:"
    ((direct, p1),) = spawn_gateways(stack, ["rl-direct"], prefix, **limits)
    ((behind, p2),) = spawn_gateways(stack, ["rl-behind"], prefix, GATEWAY_TRUSTED_PROXIES="127.0.0.1/32", **limits)
    try:
        yield {"direct": direct, "behind": behind}
    finally:
        p1.stop(10)
        p2.stop(10)


async def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_does_not_change_the_key(
    proxied: dict[str, str],
) -> None:
    async with httpx.AsyncClient(base_url=proxied["direct"], timeout=30.0) as client:
        statuses = []
        for i in range(8):
            headers = {"X-Forwarded-For": f"192.0.2.{i + 1}"}  # a fresh "address" every time
            statuses.append((await client.get(f"/v1/usernames/{username()}", headers=headers)).status_code)
        assert statuses == [200] * 5 + [429] * 3
    # Behind a trusted proxy the forwarded address is the key; what the client itself prepends is not.
    async with httpx.AsyncClient(base_url=proxied["behind"], timeout=30.0) as client:
        statuses = []
        for i in range(7):
            forged = f"203.0.113.{i + 1}"  # the client's own forgery, left of what the proxy appended
            headers = {"X-Forwarded-For": f"{forged}, 198.51.100.20"}
            statuses.append((await client.get(f"/v1/usernames/{username()}", headers=headers)).status_code)
        assert statuses == [200] * 5 + [429] * 2
        other = await client.get(f"/v1/usernames/{username()}", headers={"X-Forwarded-For": "198.51.100.21"})
        assert other.status_code == 200


async def test_authenticated_calls_are_keyed_by_user_whatever_the_address(
    proxied: dict[str, str], client: httpx.AsyncClient
) -> None:
    session = await sign_up(client)
    async with httpx.AsyncClient(base_url=proxied["behind"], timeout=30.0) as behind:
        statuses = []
        for i in range(5):
            headers = {**bearer(session), "X-Forwarded-For": f"198.51.100.{40 + i}"}
            response = await behind.get("/v1/me", headers=headers)
            statuses.append(response.status_code)
        assert statuses == [200] * 3 + [429] * 2
        assert response.headers["ratelimit-limit"] == "3"
        # A forged token is not a user: it spends the address's budget, not the user's.
        forged = {"Authorization": "Bearer not.a.token", "X-Forwarded-For": "198.51.100.60"}
        response = await behind.get("/v1/me", headers=forged)
        assert response.status_code == 401
        assert response.headers["ratelimit-limit"] == "5" and response.headers["ratelimit-remaining"] == "4"


async def test_log_in_is_limited_per_address_and_account(proxied: dict[str, str]) -> None:
    name = username()
    async with httpx.AsyncClient(base_url=proxied["behind"], timeout=30.0) as behind:

        async def log_in(identifier: dict[str, str], address: str) -> httpx.Response:
            body = {**identifier, "password": "wrong password 123"}
            return await behind.post("/v1/auth:login", json=body, headers={"X-Forwarded-For": address})

        assert (await log_in({"username": name}, "198.51.100.80")).status_code == 401
        assert (await log_in({"username": name.upper()}, "198.51.100.80")).status_code == 401
        refused = await log_in({"username": name}, "198.51.100.80")
        assert_problem(refused, 429, "RATE_LIMITED")
        assert refused.headers["ratelimit-limit"] == "2"
        # Another account from the same address, the same account from another address: allowed
        # (the refused attempt spent nothing of the address's budget).
        assert (await log_in({"username": username()}, "198.51.100.80")).status_code == 401
        assert (await log_in({"email": f"{name}@example.com"}, "198.51.100.80")).status_code == 401
        assert (await log_in({"username": name}, "198.51.100.81")).status_code == 401


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def test_three_gateways_leasing_a_hot_key_still_admit_its_limit_once(stack: Stack) -> None:
    """A limit large enough to lease (640 per day: up to 32 cells at once, one refills in 135 s),
    leases that do not expire during the test: one gateway alone asks Redis at the 1st, 2nd, 4th, ... 96th call and
    its RateLimit-Remaining stays exact; then round-robin over three, the limit exactly."""
    gateways = spawn_gateways(
        stack,
        ["rl-lease-a", "rl-lease-b", "rl-lease-c"],
        GATEWAY_RATELIMIT_IP="640/86400",
        GATEWAY_RATELIMIT_LEASE_SECONDS="60",
    )
    try:
        clients = [httpx.AsyncClient(base_url=url, timeout=30.0) for url, _ in gateways]
        for i in range(100):
            response = await clients[0].get(f"/v1/usernames/{username()}")
            assert response.status_code == 200
            assert int(response.headers["ratelimit-remaining"]) == 639 - i
        metrics = (await clients[0].get("/metrics")).text
        assert metric(metrics, "gateway_ratelimit_redis_calls_total") == 8
        assert metric(metrics, 'gateway_ratelimit_local_decisions_total{source="lease"}') == 92
        statuses = [(await clients[i % 3].get(f"/v1/usernames/{username()}")).status_code for i in range(600)]
        assert statuses == [200] * 540 + [429] * 60
        calls = 0.0
        for client in clients:
            metrics = (await client.get("/metrics")).text
            calls += metric(metrics, "gateway_ratelimit_redis_calls_total")
            assert metric(metrics, "gateway_ratelimit_fallback_total") == 0
        assert calls < 700 / 5
        for client in clients:
            await client.aclose()
    finally:
        for _, process in gateways:
            process.stop(10)
