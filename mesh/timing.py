"""The mesh's drain and lease timings, and the relations between them, in one place.

Who uses what:
- Envoy's active health checks (mesh/envoy_config.py): `health_check_interval_seconds`,
  `health_check_timeout_seconds`, `unhealthy_threshold`;
- the control plane (envoy/controlplane): `lease_ttl_seconds` (LEASE_TTL_SECONDS), the
  `heartbeat_seconds` it tells every instance, `sweep_seconds` (how often lapsed leases are looked
  for), `deregister_confirm_seconds` (how long Deregister waits for every Envoy and gRPC client to
  acknowledge the endpoint set without the instance);
- every service instance (services/common): `heartbeat_seconds` until the control plane tells its
  own, `deregister_call_timeout_seconds`, `drain_delay_seconds` (DRAIN_DELAY_SECONDS: the wait after
  NOT_SERVING when the control plane did not confirm), `deregistered_drain_seconds`
  (DEREGISTERED_DRAIN_SECONDS: the wait once it did, for calls already on the wire);
- the launcher (launcher/stack.py) passes the lease ttl and the drain delay on.

The relations (`Timing.check()` names the one that fails; it runs at start-up of the control plane,
of every service and of the launcher, after environment overrides):

1. heartbeat ≤ lease ttl / 3: a live instance renews its lease three times per ttl, so a lost
   heartbeat (a second one, just) does not lapse it.
2. lease ttl + sweep ≤ 2 s (SPEC §2: Envoy sees an endpoint change within 2 s): an instance killed
   without deregistering leaves the endpoint set one ttl after its last heartbeat, plus one sweep.
3. drain delay ≥ health-check interval x unhealthy threshold + health-check timeout: without the
   control plane's confirmation, a draining instance (NOT_SERVING) keeps accepting calls until
   Envoy's health checks failed `unhealthy_threshold` times in a row, the last answer taking up to
   one timeout. (Equal is enough: the bound already counts a whole timeout the answer never needs.)
4. deregister confirmation bound < the instance's Deregister call timeout: the instance hears the
   answer, confirmed or not, before its own call gives up.
5. deregister confirmation bound + deregistered drain < drain delay: draining with the control plane
   never takes longer than draining on health checks alone.

What they leave open: a heartbeat call that hangs until its timeout (services/common/registration.py,
1 s) delays the next one by as much, and with the defaults one such heartbeat lapses the lease
(0.5 + 1 + 0.5 s > 1.5 s): the instance registers again at once and its endpoint leaves and comes
back. The control plane answers in milliseconds; only one stalled for a second does that.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

# SPEC §2: Envoy sees an endpoint change within 2 seconds.
ENDPOINT_CHANGE_BOUND_S = 2.0

# Idempotent unary calls still unanswered after this long get a second try on another instance,
# the first answer winning: by Envoy (the route's per-try timeout with hedging,
# mesh/envoy_config.py) and by the proxyless gateway (gateway/upstream.py; gRPC's xDS client has
# no per-try timeout). One slow instance (a congested link, a GC pause, a host 200 ms away)
# then costs a read this long, not its whole delay. Several times a healthy call's p99 through
# the mesh (a few ms to tens of ms under load), so hedges stay rare while all is well.
HEDGE_AFTER_S = 0.15


class TimingError(ValueError):
    """One or more relations between the mesh's timings do not hold."""


@dataclass(frozen=True)
class Timing:
    # Envoy checks every instance's gRPC health every second: a dead or draining one is out of
    # rotation within ~2 s (SPEC §10), two failures in a row, an answer slower than 1 s failing.
    health_check_interval_seconds: float = 1.0
    health_check_timeout_seconds: float = 1.0
    unhealthy_threshold: int = 2
    # A SIGKILLed instance leaves the endpoint set within 1.5 s + one sweep: inside SPEC §2's 2 s.
    lease_ttl_seconds: float = 1.5
    # ttl / 3 (relation 1).
    heartbeat_seconds: float = 0.5
    sweep_seconds: float = 0.1
    # Envoy and the gateway acknowledge an EDS push in milliseconds; 1 s covers a busy machine.
    deregister_confirm_seconds: float = 1.0
    # Above the confirmation bound (relation 4), so the instance hears the answer.
    deregister_call_timeout_seconds: float = 2.0
    # = 1 s x 2 + 1 s, the health checks' detection time (relation 3).
    drain_delay_seconds: float = 3.0
    # Calls Envoy forwarded before it applied the removal are on the wire for microseconds to
    # milliseconds on the local network.
    deregistered_drain_seconds: float = 0.25

    @property
    def health_check_detection_seconds(self) -> float:
        """How long Envoy's active health checks take, at most, to take an instance out."""
        return self.health_check_interval_seconds * self.unhealthy_threshold + self.health_check_timeout_seconds

    def with_lease_ttl(self, ttl: float) -> Timing:
        """Another lease ttl, with the heartbeat that goes with it (ttl / 3)."""
        return replace(self, lease_ttl_seconds=ttl, heartbeat_seconds=ttl / 3)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, base: Timing | None = None) -> Timing:
        """`base` (the defaults) with the overrides the processes read from their environment:
        LEASE_TTL_SECONDS (the heartbeat follows it), DRAIN_DELAY_SECONDS,
        DEREGISTERED_DRAIN_SECONDS. Not checked: call `check()`."""
        env = os.environ if environ is None else environ
        timing = base or Timing()
        ttl = _seconds(env, "LEASE_TTL_SECONDS")
        if ttl is not None:
            timing = timing.with_lease_ttl(ttl)
        drain = _seconds(env, "DRAIN_DELAY_SECONDS")
        if drain is not None:
            timing = replace(timing, drain_delay_seconds=drain)
        deregistered = _seconds(env, "DEREGISTERED_DRAIN_SECONDS")
        if deregistered is not None:
            timing = replace(timing, deregistered_drain_seconds=deregistered)
        return timing

    def violations(self) -> list[str]:
        """Every relation (module doc) that does not hold, each with the values that break it."""
        found = [
            f"{name} must be positive (is {value:g})"
            for name, value in (
                ("health-check interval", self.health_check_interval_seconds),
                ("health-check timeout", self.health_check_timeout_seconds),
                ("unhealthy threshold", self.unhealthy_threshold),
                ("lease ttl", self.lease_ttl_seconds),
                ("heartbeat", self.heartbeat_seconds),
                ("sweep interval", self.sweep_seconds),
                ("deregister confirmation bound", self.deregister_confirm_seconds),
                ("deregister call timeout", self.deregister_call_timeout_seconds),
            )
            if value <= 0
        ]
        if self.drain_delay_seconds < 0 or self.deregistered_drain_seconds < 0:
            found.append("drain delays must not be negative")
        for relation, holds in RELATIONS:
            if not holds(self):
                found.append(relation.format(t=self, spec=ENDPOINT_CHANGE_BOUND_S))
        return found

    def check(self) -> Timing:
        """Self, when every relation holds; TimingError naming each one that does not, otherwise."""
        found = self.violations()
        if found:
            raise TimingError("mesh timing (see mesh/timing.py): " + "; ".join(found))
        return self


# (the relation as said when it fails, whether it holds): the numbered relations of the module doc.
RELATIONS: tuple[tuple[str, Callable[[Timing], bool]], ...] = (
    (
        "heartbeat ≤ lease ttl / 3, so that a lost heartbeat does not lapse a live instance's lease "
        "(heartbeat {t.heartbeat_seconds:g} s, lease ttl {t.lease_ttl_seconds:g} s)",
        lambda t: t.heartbeat_seconds <= t.lease_ttl_seconds / 3 + 1e-9,
    ),
    (
        "lease ttl + sweep interval ≤ {spec:g} s, SPEC §2's bound for an endpoint change "
        "(lease ttl {t.lease_ttl_seconds:g} s, sweep {t.sweep_seconds:g} s)",
        lambda t: t.lease_ttl_seconds + t.sweep_seconds <= ENDPOINT_CHANGE_BOUND_S + 1e-9,
    ),
    (
        "drain delay ≥ health-check interval x unhealthy threshold + health-check timeout, so that "
        "Envoy's health checks see NOT_SERVING before the server stops (drain delay "
        "{t.drain_delay_seconds:g} s < {t.health_check_interval_seconds:g} s x {t.unhealthy_threshold} + "
        "{t.health_check_timeout_seconds:g} s)",
        lambda t: t.drain_delay_seconds >= t.health_check_detection_seconds - 1e-9,
    ),
    (
        "deregister confirmation bound < deregister call timeout, so that the instance hears the control "
        "plane's answer (bound {t.deregister_confirm_seconds:g} s, timeout {t.deregister_call_timeout_seconds:g} s)",
        lambda t: t.deregister_confirm_seconds < t.deregister_call_timeout_seconds,
    ),
    (
        "deregister confirmation bound + deregistered drain < drain delay, so that draining with the "
        "control plane is never slower than on health checks alone (bound {t.deregister_confirm_seconds:g} s "
        "+ {t.deregistered_drain_seconds:g} s, drain delay {t.drain_delay_seconds:g} s)",
        lambda t: t.deregister_confirm_seconds + t.deregistered_drain_seconds < t.drain_delay_seconds,
    ),
)


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "")
    if raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise TimingError(f"setting {name}={raw!r} is not a number") from None


# The mesh's timings as shipped; processes apply their environment's overrides (`from_env`).
TIMING = Timing().check()
