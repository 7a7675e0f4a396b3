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

The bucket lives in Redis and is changed only by one Lua script (EVALSHA, reloaded by redis-py on
NOSCRIPT) with Redis's own clock (`TIME`), so the gateways' clocks never matter for the limit. The
script is asked for g cells: it reads every key of the decision (e.g. the per-IP and the
per-IP+account key of a log-in), grants the largest g' <= g that every bucket admits now (see
"Leases" for the further cap), charges g' emission intervals to every TAT (all keys or none) with
an expiry equal to the time the bucket takes to drain, and answers g' (0: refused, with the wait).

Leases. A round trip per request costs the gateway more CPU than the rest of a cheap call
(redis-py's client side, 100 to 240 µs per command), so a decision on ONE key asks for a lease: the
g' cells charged admit this request and the next g' - 1 on that key from this gateway's memory,
until they are used up or L = GATEWAY_RATELIMIT_LEASE_SECONDS (1) has passed since the request
was sent; then they are void. One lease per key per gateway at a time: requests for a key whose
lease ran out wait for the single renewal in flight rather than each asking Redis.
- Grant size g: 1 for a key this gateway has not seen lately; twice the last grant when that was
  used up within its lifetime (the key is hot here); what the last lease actually used when it
  expired with cells left; never above GATEWAY_RATELIMIT_LEASE_MAX (32). The script caps it
  again at max(1, floor(a / 16)), a being what the bucket admits at that moment: a lease is never
  more than 1/16 of the limit, nor of what is left, and the last 31 cells of any bucket are handed
  out one round trip each, so a client spreading over N gateways still gets the limit once.
- A decision on several keys (a log-in: per-IP + per-IP+account) is a lease of 1 on every key,
  charged all or none, used at once: exactly the per-request algorithm. Limits below 32 per
  period never lease more than 1 either (the 1/16 cap).
- A refusal on one key is remembered until its Retry-After (nothing can be admitted before:
  only time lowers a TAT), so a client hammering past its limit costs no round trips.
- GATEWAY_RATELIMIT_LEASE_MAX=1 turns all this off: one round trip per decision, as before.

Invariant: every admitted request used a cell that Redis charged before it, at most L earlier,
and no cell is used twice. Hence the bound, with N gateways and G = min(LEASE_MAX, count // 16):
- The limit, up to one lease lifetime of refill: over any interval of length t a key admits at
  most the cells charged within t + L before its end, count + floor((t + L) / T): the GCRA bound
  plus at most ceil(L / T) cells (and at most the leased cells unused when the interval starts,
  <= N x (G - 1)). E.g. at 600/min a gateway leases 32 of a full bucket, holds them 1 s while
  10 cells refill, then uses them as others use the whole bucket: 610 at once, never 611. The
  sustained rate is exactly `count` per `period`; a decision on several keys is never leased.
- Strictness, the price: cells leased by a gateway and never used (its client stopped or moved
  to another gateway) are stranded, lost to every gateway until they refill: at most G - 1 per
  key per gateway per lease lifetime, and at most 1/16 of what the bucket had left when the
  lease was granted. `gateway_ratelimit_lease_cells_unused_total` counts them.
  With the defaults (LEASE_MAX 32, L = 1 s):
      limit             T       G    stranded per gateway            excess over GCRA
      60/min per IP     1 s     3    <= 2 (3 % of the limit)          <= 1 cell
      600/min per user  0.1 s   32   <= 31 (5 %), <= 1/16 of the rest <= 10 cells
      10/min log-in     6 s     1    0: leases of 1, used at once     0 (exact)
Headers: RateLimit-Remaining from a lease is what Redis could still admit right after the grant
plus this gateway's unused cells of it (a snapshot as of the grant: no refill since, no other
gateway's use since); RateLimit-Reset counts the whole lease as spent; Retry-After is Redis's.

Keys (under CACHE_PREFIX + "rl:"): `user:<sub>` for a call with a valid access token (verified
with the auth service's public key; a forged or expired token is keyed as unauthenticated),
else `ip:<client ip>` (see services/common/addresses.py: the socket peer, or X-Forwarded-For only behind a trusted
proxy); a log-in also spends `login:<ip>:<hash of the lower-cased account>`. Which method is a
log-in, and which request fields name its account (LogIn: email, else username), is declared in
its proto (`option (capsule.common.v1.rate_limit) = {login: true, account_fields: [...]}`), read
at start-up (Rpc.policy).
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
Leases (and remembered refusals) granted before the outage are still used until they expire:
their cells were charged in Redis.

Metrics of the ratio: `gateway_ratelimit_redis_calls_total` (round trips, failed ones included)
against `gateway_ratelimit_local_decisions_total{source="lease"|"refusal"}` (decisions made from
memory) and `gateway_ratelimit_fallback_total`.
"""

from __future__ import annotations

import asyncio
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
from gateway.clientip import ClientIpResolver
from gateway.problems import Problem
from services.common.addresses import address_key
from services.common.errors import Unauthenticated
from services.common.tokens import AccessTokenVerifier

log = logging.getLogger(__name__)

FALLBACK_DECISIONS = Counter(
    "gateway_ratelimit_fallback_total", "Rate-limit decisions made by the per-instance fallback (Redis unreachable)"
)
REDIS_ERRORS = Counter("gateway_ratelimit_redis_errors_total", "Redis errors and timeouts seen by the rate limiter")
REDIS_UP = Gauge("gateway_ratelimit_redis_up", "1 while rate limiting is global (Redis), 0 while per instance")
REJECTED = Counter("gateway_ratelimit_rejected_total", "Requests answered 429", ["limit"])
REDIS_CALLS = Counter(
    "gateway_ratelimit_redis_calls_total",
    "Rate-limit round trips to Redis (one script call each, failed ones included)",
)
LOCAL_DECISIONS = Counter(
    "gateway_ratelimit_local_decisions_total",
    "Rate-limit decisions made without Redis: from a leased cell, or a refusal still in force",
    ["source"],
)
_FROM_LEASE, _FROM_REFUSAL = LOCAL_DECISIONS.labels("lease"), LOCAL_DECISIONS.labels("refusal")  # labels() is slow
UNUSED_CELLS = Counter(
    "gateway_ratelimit_lease_cells_unused_total", "Leased cells (charged in Redis) that expired unused"
)

MAX_LOGIN_BODY_BYTES = 16 * 1024  # a log-in body is a few hundred bytes; larger ones are not parsed
US = 1_000_000

LEASE_FRACTION = 16  # a lease is at most this fraction (1/16) of what its bucket admits when granted

# KEYS: the buckets of one decision. ARGV: cells wanted, LEASE_FRACTION, then (emission, period) per
# key, in µs. Answers {granted, retry µs, then (remaining, TAT - now) per key after the charge}.
_LEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local grant = tonumber(ARGV[1])
local fraction = tonumber(ARGV[2])
local tats = {}
local admits = {}
local retry = 0
for i = 1, n do
  local emission = tonumber(ARGV[1 + 2 * i])
  local period = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local admit = math.floor((now + period - tat) / emission)
  if admit < 1 then
    admit = 0
    local wait = tat + emission - period - now
    if wait > retry then retry = wait end
  end
  local cap = math.floor(admit / fraction)
  if cap < 1 then cap = 1 end
  if cap < grant then grant = cap end
  if admit < grant then grant = admit end
  tats[i] = tat
  admits[i] = admit
end
local out = {grant, retry}
for i = 1, n do
  local emission = tonumber(ARGV[1 + 2 * i])
  local tat = tats[i]
  if grant > 0 then
    tat = tat + grant * emission
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', string.format('%.0f', math.ceil((tat - now) / 1000)))
  end
  out[#out + 1] = admits[i] - grant
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


def _script_decision(checks: Sequence[Check], values: Sequence[int], unused: int) -> Decision:
    """The script's answer as a decision; `unused` leased cells (one key) count as remaining."""
    per_check = [(values[2 + 2 * i] + unused, float(values[3 + 2 * i])) for i in range(len(checks))]
    return _decision(values[0] > 0, values[1], checks, per_check)


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


class _Lease:
    """One key's lease on this gateway: its unused cells, what the grant said, and the renewal
    in flight (others wait for it instead of asking Redis too)."""

    __slots__ = ("cells", "expires", "granted", "limit", "pending", "remaining", "reset_us", "retry_until", "sent_at")

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.granted = 0  # size of the last grant; 0: none yet, or refused
        self.cells = 0  # cells of it not handed out yet
        self.sent_at = 0.0  # local clock when the grant was asked for
        self.expires = 0.0  # sent_at + lease lifetime: cells are void from then on
        self.remaining = 0  # what Redis could still admit right after the grant
        self.reset_us = 0.0  # TAT - now in Redis right after the grant
        self.retry_until = -math.inf  # a refusal (granted 0) holds until then
        self.pending: asyncio.Event | None = None

    def take(self, now: float) -> Decision | None:
        """A decision from memory: a leased cell, or the refusal still in force; else None."""
        if self.cells > 0 and now < self.expires:
            self.cells -= 1
            return Decision(True, self.limit, self.remaining + self.cells, self._reset(now), 0.0)
        if self.granted == 0 and now < self.retry_until:
            return Decision(False, self.limit, 0, self._reset(now), self.retry_until - now)
        return None

    def _reset(self, now: float) -> float:
        return max(0.0, self.reset_us / US - (now - self.sent_at))

    def wanted(self, now: float, lease_max: int, lifetime: float) -> int:
        """The size of the next grant to ask for (the script may grant less)."""
        if self.granted == 0 or now >= self.expires + lifetime:
            return 1  # cold here (or refused last time)
        if now < self.expires:
            return min(lease_max, 2 * self.granted)  # used up within its lifetime: hot
        return max(1, self.granted - self.cells)  # expired: what it did use

    def discard(self) -> None:
        if self.cells:
            UNUSED_CELLS.inc(self.cells)
            self.cells = 0

    def idle(self, now: float, lifetime: float) -> bool:
        return self.pending is None and now >= self.expires + lifetime and now >= self.retry_until


class RateLimiter:
    """Decides with Redis (leasing cells of one-key decisions) when it answers, else with the
    per-instance fallback."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        *,
        timeout_seconds: float = 0.1,
        backoff_seconds: float = 1.0,
        lease_max: int = 32,
        lease_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.client: redis.Redis = redis.from_url(
            redis_url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            retry=None,
        )
        self.prefix = prefix + "rl:"
        self.script = self.client.register_script(_LEASE_LUA)
        self.fallback = LocalGcra(clock)
        self._clock = clock
        self._backoff_seconds = backoff_seconds
        self._lease_max = max(1, lease_max)
        self._lease_seconds = lease_seconds
        self._leases: dict[str, _Lease] = {}
        self._max_keys = max_keys
        self._down_until = 0.0
        self._in_outage = False
        REDIS_UP.set(1)

    @property
    def global_mode(self) -> bool:
        return not self._in_outage

    async def decide(self, checks: Sequence[Check]) -> Decision:
        if len(checks) != 1 or self._lease_max == 1:
            values = await self._ask(checks, 1)
            if values is None:
                FALLBACK_DECISIONS.inc()
                return self.fallback.decide(checks)
            return _script_decision(checks, values, unused=0)
        check = checks[0]
        while True:
            now = self._clock()
            lease = self._leases.get(check.key)
            if lease is None:
                self._evict(now)
                lease = self._leases[check.key] = _Lease(check.limit)
            else:
                decision = lease.take(now)
                if decision is not None:
                    (_FROM_LEASE if decision.allowed else _FROM_REFUSAL).inc()
                    return decision
                if lease.pending is not None:  # another request is renewing it: share its grant
                    await lease.pending.wait()
                    continue
            return await self._renew(check, lease, now)

    async def _renew(self, check: Check, lease: _Lease, now: float) -> Decision:
        wanted = lease.wanted(now, self._lease_max, self._lease_seconds)
        lease.discard()
        lease.pending = pending = asyncio.Event()
        try:
            values = await self._ask([check], wanted)
        finally:
            lease.pending = None
            pending.set()
        if values is None:
            FALLBACK_DECISIONS.inc()
            return self.fallback.decide([check])
        granted, retry_us, remaining, reset_us = values[:4]
        lease.granted, lease.cells, lease.remaining, lease.reset_us = granted, max(0, granted - 1), remaining, reset_us
        lease.sent_at, lease.expires = now, now + self._lease_seconds  # from before the charge: used within L of it
        lease.retry_until = now + retry_us / US if granted == 0 else -math.inf
        return _script_decision([check], values, unused=lease.cells)

    async def _ask(self, checks: Sequence[Check], cells: int) -> list[int] | None:
        """One script call for `cells` cells of every key (all or none); None when Redis does not
        answer or is in its back-off."""
        if self._clock() < self._down_until:
            return None
        keys = [self.prefix + c.key for c in checks]
        args = [cells, LEASE_FRACTION]
        for c in checks:
            args += (c.limit.emission_us, c.limit.period_us)
        REDIS_CALLS.inc()
        try:
            raw = await self.script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._succeeded()
        return [int(v) for v in raw]

    def _evict(self, now: float) -> None:
        if len(self._leases) < self._max_keys:
            return
        for key, lease in list(self._leases.items()):
            if lease.idle(now, self._lease_seconds):
                lease.discard()
                del self._leases[key]

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
        user = self._user(call.headers.get(b"authorization"))
        login = call.match.route.binding.rpc.policy.login
        # The client's address is only a key without a user, or for log-in (parsing it is not free).
        ip = address_key(self.resolver.resolve(call.scope)) if login is not None or not user else ""
        checks = [Check(f"user:{user}", self.limits.user) if user else Check(f"ip:{ip}", self.limits.ip)]
        if login is not None:
            account = await _login_account(call, self.max_body_bytes, login.json_keys)
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


async def _login_account(call: Call, max_body_bytes: int, keys: Sequence[str]) -> str | None:
    """Name the account of a log-in body (the proxy reads the same body afterwards): a short hash
    of the lower-cased value of the first of `keys` (the declared account fields' JSON names) that
    the body sets (keys stay small whatever a client sends). A body larger than a log-in ever is,
    or one that is not a JSON object, names no account."""
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
    account = next((value for key in keys if (value := body.get(key))), None)
    if not isinstance(account, str) or not account.strip():
        return None
    return hashlib.blake2b(account.strip().lower().encode(), digest_size=12).hexdigest()
