"""Rate limiting of the transcoded API (SPEC §7), global across gateway instances.

Algorithm: GCRA (generic cell rate algorithm), i.e. a leaky bucket kept as one number per key,
the theoretical arrival time (TAT). A limit of `count` per `period` has an emission interval
T = period / count and admits a burst of `count`; a request at `now` is admitted when
max(TAT, now) + T - now <= period, and then moves TAT to max(TAT, now) + T. There is no window
boundary: over any interval of length t at most `count` + t / T requests pass — never more than
the burst at once, exactly `count` per period sustained — where a fixed window (envoyproxy/
ratelimit) lets 2x the limit through within moments around each boundary. (A fresh client may
use its burst and then the refill, up to 2x count - 1 in its very first period; a sliding-window
log would forbid that at the price of one sorted-set entry per request.)

One decision is one Redis round trip: a Lua script (EVALSHA, reloaded by redis-py on NOSCRIPT)
that reads every key of the decision (e.g. the per-IP and the per-IP+account key of a log-in),
admits only if all admit, then writes the new TATs with an expiry equal to the time the bucket
takes to drain. Time is Redis's own (`TIME`), so the gateways' clocks never matter.

Keys (under CACHE_PREFIX + "rl:"): `user:<sub>` for a call with a valid access token (verified
with the auth service's public key; a forged or expired token is keyed as unauthenticated),
else `ip:<client ip>` (see clientip.py: the socket peer, or X-Forwarded-For only behind a trusted
proxy); a log-in also spends `login:<ip>:<hash of the lower-cased email or username>`.
Every attempt counts (the gateway cannot know the outcome first). Limits: 60/min per IP,
600/min per user, 10/min per IP+account, all set by GATEWAY_RATELIMIT_* (settings.py).
Operational routes (/healthz, /readyz, /metrics, /openapi.json) are not transcoded routes, so the
limiter (a route middleware) never sees them. Unknown paths (404) are not limited either: they
cost no upstream call.

Redis unreachable (error or no answer within GATEWAY_RATELIMIT_REDIS_TIMEOUT_MS): the decision is
made by an in-process GCRA with the same limits (so per instance: N gateways admit up to N times
the limit), `gateway_ratelimit_fallback_total` counts those decisions, the gauge
`gateway_ratelimit_redis_up` drops to 0 and one warning is logged per outage. Redis is not
asked again for GATEWAY_RATELIMIT_BACKOFF_SECONDS (no timeout paid per request during an
outage); after that the next request probes it and, when it answers, global limiting resumes
(one info line). Failing open entirely was rejected: an outage must not remove log-in limits.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from gateway.calls import Call, Next, Reply
from gateway.clientip import ClientIpResolver, rate_limit_key
from gateway.problems import Problem
from gateway.routing import RouteMatch
from services.common.errors import Unauthenticated
from services.common.tokens import AccessTokenVerifier

log = logging.getLogger(__name__)

FALLBACK_DECISIONS = Counter(
    "gateway_ratelimit_fallback_total", "Rate-limit decisions made by the per-instance fallback (Redis unreachable)"
)
REDIS_ERRORS = Counter("gateway_ratelimit_redis_errors_total", "Redis errors and timeouts seen by the rate limiter")
REDIS_UP = Gauge("gateway_ratelimit_redis_up", "1 while rate limiting is global (Redis), 0 while per instance")
REJECTED = Counter("gateway_ratelimit_rejected_total", "Requests answered 429", ["limit"])

LOGIN_RPC = "capsule.auth.v1.AuthService.LogIn"
MAX_LOGIN_BODY_BYTES = 16 * 1024  # a log-in body is a few hundred bytes; larger ones are not parsed
US = 1_000_000

_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats = {}
local allowed = 1
local retry = 0
for i = 1, n do
  local emission = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local wait = tat + emission - period - now
  if wait > 0 then
    allowed = 0
    if wait > retry then retry = wait end
  end
  tats[i] = tat
end
local out = {allowed, retry}
for i = 1, n do
  local emission = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local tat = tats[i]
  if allowed == 1 then
    tat = tat + emission
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', string.format('%.0f', math.ceil((tat - now) / 1000)))
  end
  local remaining = math.floor((period - (tat - now)) / emission)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = tat - now
end
return out
"""


@dataclass(frozen=True)
class Limit:
    name: str  # ip, user, login: the metric label
    count: int
    period_seconds: float

    @property
    def emission_us(self) -> int:
        return max(1, int(self.period_seconds * US) // self.count)

    @property
    def period_us(self) -> int:
        return int(self.period_seconds * US)


@dataclass(frozen=True)
class Check:
    key: str  # without the prefix: ip:1.2.3.4
    limit: Limit


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: Limit  # the binding limit: the one with the fewest requests left
    remaining: int
    reset_seconds: float  # until the binding bucket is empty (full quota again)
    retry_after_seconds: float  # 0 when allowed

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"ratelimit-limit", str(self.limit.count).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(math.ceil(self.reset_seconds)).encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(max(1, math.ceil(self.retry_after_seconds))).encode()))
        return headers


def _decision(
    allowed: bool, retry_us: float, checks: Sequence[Check], per_check: Sequence[tuple[int, float]]
) -> Decision:
    index = min(range(len(checks)), key=lambda i: (per_check[i][0], -per_check[i][1]))
    remaining, reset_us = per_check[index]
    return Decision(allowed, checks[index].limit, remaining, reset_us / US, retry_us / US)


class LocalGcra:
    """The same algorithm in process memory (the fallback; also the reference for unit tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._tats: dict[str, int] = {}
        self._max_keys = max_keys

    def decide(self, checks: Sequence[Check]) -> Decision:
        now = int(self._clock() * US)
        tats = [max(self._tats.get(c.key, 0), now) for c in checks]
        waits = [tat + c.limit.emission_us - c.limit.period_us - now for tat, c in zip(tats, checks, strict=True)]
        allowed = all(w <= 0 for w in waits)
        per_check: list[tuple[int, float]] = []
        for tat, check in zip(tats, checks, strict=True):
            if allowed:
                tat += check.limit.emission_us
                self._tats[check.key] = tat
            remaining = max(0, (check.limit.period_us - (tat - now)) // check.limit.emission_us)
            per_check.append((remaining, tat - now))
        if len(self._tats) > self._max_keys:
            self._tats = {k: v for k, v in self._tats.items() if v > now}
        return _decision(allowed, max(0, *waits), checks, per_check)


class RateLimiter:
    """Decides with Redis when it answers, else with the per-instance fallback."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        timeout_seconds: float = 0.1,
        backoff_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client: redis.Redis = redis.from_url(
            redis_url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            retry=None,
        )
        self.prefix = prefix + "rl:"
        self.script = self.client.register_script(_GCRA_LUA)
        self.fallback = LocalGcra(clock)
        self._clock = clock
        self._backoff_seconds = backoff_seconds
        self._down_until = 0.0
        self._in_outage = False
        REDIS_UP.set(1)

    @property
    def global_mode(self) -> bool:
        return not self._in_outage

    async def decide(self, checks: Sequence[Check]) -> Decision:
        if self._clock() >= self._down_until:
            keys = [self.prefix + c.key for c in checks]
            args: list[int] = []
            for c in checks:
                args += (c.limit.emission_us, c.limit.period_us)
            try:
                raw = await self.script(keys=keys, args=args)
            except (RedisError, OSError) as exc:
                self._failed(exc)
            else:
                self._succeeded()
                values = [int(v) for v in raw]
                per_check = [(values[2 + 2 * i], float(values[3 + 2 * i])) for i in range(len(checks))]
                return _decision(bool(values[0]), values[1], checks, per_check)
        FALLBACK_DECISIONS.inc()
        return self.fallback.decide(checks)

    def _failed(self, exc: Exception) -> None:
        REDIS_ERRORS.inc()
        self._down_until = self._clock() + self._backoff_seconds
        if not self._in_outage:
            self._in_outage = True
            REDIS_UP.set(0)
            log.warning(
                "rate limiting: redis unreachable, limiting per instance until it answers again",
                extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}},
            )

    def _succeeded(self) -> None:
        if self._in_outage:
            self._in_outage = False
            REDIS_UP.set(1)
            log.info("rate limiting: redis is back, limiting globally again")

    async def close(self) -> None:
        await self.client.aclose()


@dataclass(frozen=True)
class Limits:
    ip: Limit
    user: Limit
    login: Limit


class RateLimit:
    """The policy (gateway/calls.py): one decision per transcoded call; RateLimit-* on every
    limited answer, a 429 problem with Retry-After when refused."""

    def __init__(
        self,
        *,
        limiter: RateLimiter,
        limits: Limits,
        resolver: ClientIpResolver,
        verifier: AccessTokenVerifier | None,
        max_body_bytes: int = MAX_LOGIN_BODY_BYTES,
    ) -> None:
        self.limiter = limiter
        self.limits = limits
        self.resolver = resolver
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

    async def __call__(self, call: Call, next: Next) -> Reply:
        ip = rate_limit_key(self.resolver.resolve(call.scope))
        user = self._user(call.headers.get(b"authorization"))
        checks = [Check(f"user:{user}", self.limits.user) if user else Check(f"ip:{ip}", self.limits.ip)]
        if _full_name(call.match) == LOGIN_RPC:
            account = await _login_account(call, self.max_body_bytes)
            if account:
                checks.append(Check(f"login:{ip}:{account}", self.limits.login))
        decision = await self.limiter.decide(checks)
        headers = decision.headers()
        if not decision.allowed:
            REJECTED.labels(decision.limit.name).inc()
            raise Problem(
                429,
                "RATE_LIMITED",
                f"Too many requests; retry in {headers[-1][1].decode()} s.",
                headers={k.decode(): v.decode() for k, v in headers},
            )
        reply = await next(call)
        reply.headers += headers
        return reply

    def _user(self, authorization: bytes | None) -> str | None:
        if self.verifier is None or authorization is None:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            return str(self.verifier.verify(token.strip()).user_id)
        except Unauthenticated:
            return None


def _full_name(match: RouteMatch) -> str:
    rpc = match.route.binding.rpc
    return f"{rpc.service}.{rpc.name}"


async def _login_account(call: Call, max_body_bytes: int) -> str | None:
    """Name the account of a log-in body (the proxy reads the same body afterwards): a short hash
    of the lower-cased email or username (keys stay small whatever a client sends). A body larger
    than a log-in ever is, or one that is not a JSON object, names no account."""
    declared = call.headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_LOGIN_BODY_BYTES):
        return None
    raw = await call.body(max_body_bytes)
    if len(raw) > MAX_LOGIN_BODY_BYTES:
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    account = body.get("email") or body.get("username")
    if not isinstance(account, str) or not account.strip():
        return None
    return hashlib.blake2b(account.strip().lower().encode(), digest_size=12).hexdigest()
