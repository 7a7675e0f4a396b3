"""Log-in failure limits, enforced by the auth service itself (SPEC §3): per account and per client
IP, in Redis, so every auth instance shares them and a gRPC caller meets them as an HTTP one does
(the gateway's log-in limit is a first line only).

- Checked before the password is hashed: a refused guess costs one Redis round trip, no Argon2.
- Counted on failures only, in fixed windows (INCR, and EXPIRE on the first failure of a window,
  in one Lua script: atomic across instances). A window ends `window_seconds` after its first
  failure; the refusal carries that time as its retry hint (RetryInfo → Retry-After).
- A successful log-in clears its account's count (not its IP's).
- The account key is the account's id when it exists (email and username count together), else
  the identifier as given; existence is not secret here (sign-up and CheckUsername tell it).

Trade-off: the per-account limit lets anyone lock an account out of password log-in for up to one
window by failing on purpose, even for its owner from another address (the price of stopping a
distributed guesser, who changes IP at will). Nobody else's failures block a log-in beyond that:
the per-IP limit is charged to the guesser's address only.

Redis unreachable: the limits are not enforced (fail open, counted in
`login_limit_unchecked_total` and logged): log-in keeps working during an outage, as SPEC §10
wants; the gateway's per-instance fallback limit still stands in front of HTTP callers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.common.addresses import IpNetwork, address_key, client_address
from services.common.errors import ResourceExhausted

log = logging.getLogger(__name__)

LOGIN_REFUSED = Counter("login_limit_refusals_total", "Log-ins refused by a failure limit", ["limit"])
LOGIN_UNCHECKED = Counter("login_limit_unchecked_total", "Log-ins let through unchecked: Redis did not answer")

# KEYS: account, ip. ARGV: account limit, ip limit. → 0 if allowed, else the ms until the fuller
# window ends (at least 1).
_CHECK = """
local wait = 0
for i = 1, 2 do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count >= tonumber(ARGV[i]) then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 1 then ttl = 1 end
    if ttl > wait then wait = ttl end
  end
end
return wait
"""

# KEYS: account, ip. ARGV: window ms. A window starts with its first failure.
_FAIL = """
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return 1
"""


@dataclass(frozen=True)
class LoginLimitSettings:
    account_failures: int = 10
    ip_failures: int = 100
    window_seconds: int = 15 * 60
    # Peers (CIDRs) whose `x-forwarded-for` names the client: the mesh's own hops (Envoy, the
    # gateway). Anyone else is keyed by its own address.
    trusted_proxies: tuple[IpNetwork, ...] = ()


class TooManyFailures(ResourceExhausted):
    default_reason = "LOGIN_RATE_LIMITED"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        # RetryInfo in the status, which the gateway turns into Retry-After.
        super().__init__(message, retry_after_seconds=retry_after_seconds)


class LoginLimits:
    def __init__(
        self, client: redis.Redis, prefix: str, settings: LoginLimitSettings, *, backoff_seconds: float = 1.0
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._settings = settings
        # After a Redis failure, Redis is skipped for a while: a frozen one must not cost every
        # log-in a timeout.
        self._backoff = backoff_seconds
        self._down_until = 0.0
        self._check = client.register_script(_CHECK)
        self._fail = client.register_script(_FAIL)

    def _keys(self, account: str, ip: str) -> list[str]:
        return [f"{self._prefix}login-failures:account:{account}", f"{self._prefix}login-failures:ip:{address_key(ip)}"]

    async def check(self, account: str, ip: str) -> None:
        """Raises TooManyFailures when either limit is reached; before any password work."""
        s = self._settings
        if time.monotonic() < self._down_until:
            LOGIN_UNCHECKED.inc()
            return
        try:
            wait_ms = int(await self._check(keys=self._keys(account, ip), args=[s.account_failures, s.ip_failures]))
        except (RedisError, OSError) as exc:
            self._unavailable(exc, "log-in limits not checked")
            return
        if wait_ms > 0:
            LOGIN_REFUSED.labels("login").inc()
            raise TooManyFailures(
                "too many failed log-ins for this account or from this address; try again later", wait_ms / 1000
            )

    async def failed(self, account: str, ip: str) -> None:
        if time.monotonic() < self._down_until:
            return
        try:
            await self._fail(keys=self._keys(account, ip), args=[self._settings.window_seconds * 1000])
        except (RedisError, OSError) as exc:
            self._unavailable(exc, "log-in failure not counted")

    def _unavailable(self, exc: BaseException, what: str) -> None:
        LOGIN_UNCHECKED.inc()
        self._down_until = time.monotonic() + self._backoff
        log.warning(what, extra={"fields": {"error": str(exc)}})

    async def succeeded(self, account: str) -> None:
        if time.monotonic() < self._down_until:
            return
        with contextlib.suppress(RedisError, OSError):  # else the count runs out with its window
            await self._client.delete(self._keys(account, "")[0])

    def client_ip(self, metadata: Sequence[tuple[str, str | bytes]], peer: str) -> str:
        """The caller's address (services/common/addresses.py): `x-forwarded-for` only when the
        peer is a trusted mesh hop (the gateway sets it to the client it resolved)."""
        hops: list[str] = []
        for key, value in metadata:
            if key == "x-forwarded-for":
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                hops.extend(part.strip() for part in text.split(","))
        return client_address(_peer_address(peer), hops, self._settings.trusted_proxies)


def _peer_address(peer: str) -> str:
    """grpc's peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`, `unix:…`) → the address."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or "unknown"
