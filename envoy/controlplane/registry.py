"""Leases of service instances: who serves what, where, for how long.

No gRPC and no Envoy here. An instance registers (service, host, port, zone, metadata) and gets a
lease that lapses `ttl` after the last heartbeat; `expire()` drops lapsed leases. Every change of
the endpoint set calls the listeners (the control plane rebuilds its snapshot from `endpoints()`).
Time comes from an injectable clock so tests drive expiry without sleeping.

A lease ends only by lapsing or by its holder (SPEC §12): it remembers who registered it (the
workload named by the caller's certificate; None over plain text, where no caller is named), and a
heartbeat, a deregistration or a re-registration of its address by anyone else raises
NotLeaseHolder and changes nothing. Lease ids are 128 random bits (never a counter), so one cannot
be guessed; but knowing an id is not what lets a caller act on the lease — being its holder is.

A control plane cut off from the network hears no heartbeat at all, and every lease would lapse
one after the other: the endpoint sets it pushes once it is reachable again would be empty, and
every call would fail until each instance registered again. So lapsed leases are dropped only
while the registry hears from the mesh (a heartbeat, a registration or a deregistration within
the last `ttl / 2`, while each instance heartbeats every `ttl / 3`); an instance that dies while
the others keep talking leaves as before. When the silence ends, every lease gets a whole ttl
from then on to be renewed, so instances whose channels reconnect a little later are not dropped
for the control plane's own outage. A lone lease is judged on its own (no one else to hear from).
What silence costs: endpoints of instances that really died meanwhile stay listed until the mesh
is heard again; Envoy's active health checks keep calls away from them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Endpoint:
    """One registered instance of a service, as Envoy will see it."""

    service: str
    host: str
    port: int
    zone: str = ""
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.service, self.host, self.port)

    def sort_key(self) -> tuple[str, str, int, str, tuple[tuple[str, str], ...]]:
        """The dataclass order as one tuple: `sorted(eps, key=Endpoint.sort_key)` builds it once per
        endpoint instead of twice per comparison (snapshots sort every endpoint on every change)."""
        return (self.service, self.host, self.port, self.zone, self.metadata)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class NotLeaseHolder(Exception):
    """The lease (or the address's lease) is held by another workload."""


@dataclass
class Lease:
    lease_id: str
    endpoint: Endpoint
    expires_at: float
    registered_at: float = field(default=0.0)
    # The workload that registered it (its certificate's identity); None over plain text.
    holder: str | None = None


class Registry:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self.ttl = ttl
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._listeners: list[Callable[[], None]] = []
        # When the mesh was last heard from (any lease holder's call): see the module doc.
        self._last_heard = clock()
        self.deaf_after = ttl / 2

    # --- listeners -------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener()` runs after every change of the endpoint set (not after plain heartbeats)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    # --- leases ----------------------------------------------------------------------------------

    def register(
        self,
        service: str,
        host: str,
        port: int,
        zone: str = "",
        metadata: Mapping[str, str] | None = None,
        *,
        holder: str | None = None,
    ) -> Lease:
        """A new lease for the address, held by `holder`; an earlier lease of the same (service,
        host, port) is replaced (a restarted process on the same address, or a re-registration
        after the control plane restarted) — if the same holder has it, else NotLeaseHolder."""
        if not service or not host or not 0 < port < 65536:
            raise ValueError(f"invalid instance: service={service!r} host={host!r} port={port}")
        endpoint = Endpoint(service, host, port, zone, tuple(sorted((metadata or {}).items())))
        key = (service, host, port)
        replaced = [lid for lid, lease in self._leases.items() if lease.endpoint.key == key]
        if any(self._leases[lid].holder != holder for lid in replaced):
            raise NotLeaseHolder(f"{endpoint.address} of {service} is registered by another workload")
        for lid in replaced:
            del self._leases[lid]
        now = self._heard()
        lease = Lease(secrets.token_urlsafe(16), endpoint, now + self.ttl, now, holder)
        self._leases[lease.lease_id] = lease
        self._changed()
        return lease

    def _held(self, lease_id: str, holder: str | None) -> Lease | None:
        lease = self._leases.get(lease_id)
        if lease is not None and lease.holder != holder:
            raise NotLeaseHolder("the lease is held by another workload")
        return lease

    def heartbeat(self, lease_id: str, *, holder: str | None = None) -> bool:
        """Renew; False when the lease is unknown or already lapsed (the caller registers again);
        NotLeaseHolder when someone else holds it."""
        lease = self._held(lease_id, holder)
        now = self._heard()
        if lease is None:
            return False
        if lease.expires_at <= now:
            self.expire()
            if lease_id not in self._leases:
                return False
        lease.expires_at = now + self.ttl
        return True

    def deregister(self, lease_id: str, *, holder: str | None = None) -> Endpoint | None:
        """End the lease; None when it is unknown; NotLeaseHolder (the lease kept) when someone
        else holds it."""
        if self._held(lease_id, holder) is None:
            return None
        self._heard()
        lease = self._leases.pop(lease_id)
        self._changed()
        return lease.endpoint

    def _heard(self) -> float:
        """A lease holder reached us: the time now. After a silence (see the module doc), every
        lease gets a whole ttl from now."""
        now = self._clock()
        if len(self._leases) > 1 and self.deaf(now):
            for lease in self._leases.values():
                lease.expires_at = max(lease.expires_at, now + self.ttl)
        self._last_heard = now
        return now

    def deaf(self, now: float | None = None) -> bool:
        """Whether no lease holder was heard from for `deaf_after`: the control plane, not every
        instance at once, is the likelier one cut off."""
        now = self._clock() if now is None else now
        return now - self._last_heard > self.deaf_after

    def expire(self) -> list[Endpoint]:
        """Drop every lapsed lease, unless the registry hears nobody (see the module doc) and holds
        more than one; returns the endpoints dropped."""
        now = self._clock()
        if len(self._leases) > 1 and self.deaf(now):
            return []
        gone = [lid for lid, lease in self._leases.items() if lease.expires_at <= now]
        endpoints = [self._leases.pop(lid).endpoint for lid in gone]
        if endpoints:
            self._changed()
        return endpoints

    # --- views -------------------------------------------------------------------------------------

    def endpoints(self) -> dict[str, list[Endpoint]]:
        """Service name → its live endpoints, sorted (deterministic snapshots)."""
        result: dict[str, list[Endpoint]] = {}
        for lease in self._leases.values():
            result.setdefault(lease.endpoint.service, []).append(lease.endpoint)
        return {name: sorted(eps, key=Endpoint.sort_key) for name, eps in sorted(result.items())}

    def leases(self) -> list[Lease]:
        return sorted(self._leases.values(), key=lambda lease: lease.endpoint)
