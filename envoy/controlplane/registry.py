"""Leases of service instances: who serves what, where, for how long.

No gRPC and no Envoy here. An instance registers (service, host, port, zone, metadata) and gets a
lease that lapses `ttl` after the last heartbeat; `expire()` drops lapsed leases. Every change of
the endpoint set calls the listeners (the control plane rebuilds its snapshot from `endpoints()`).
Time comes from an injectable clock so tests drive expiry without sleeping.
"""

from __future__ import annotations

import itertools
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


@dataclass
class Lease:
    lease_id: str
    endpoint: Endpoint
    expires_at: float
    registered_at: float = field(default=0.0)


class Registry:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self.ttl = ttl
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._listeners: list[Callable[[], None]] = []
        self._counter = itertools.count(1)

    # --- listeners -------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener()` runs after every change of the endpoint set (not after plain heartbeats)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    # --- leases ----------------------------------------------------------------------------------

    def register(
        self, service: str, host: str, port: int, zone: str = "", metadata: Mapping[str, str] | None = None
    ) -> Lease:
        """A new lease for the address; an earlier lease of the same (service, host, port) is
        replaced (a restarted process on the same address, or a re-registration after the control
        plane restarted)."""
        if not service or not host or not 0 < port < 65536:
            raise ValueError(f"invalid instance: service={service!r} host={host!r} port={port}")
        endpoint = Endpoint(service, host, port, zone, tuple(sorted((metadata or {}).items())))
        key = (service, host, port)
        replaced = [lid for lid, lease in self._leases.items() if lease.endpoint.key == key]
        for lid in replaced:
            del self._leases[lid]
        now = self._clock()
        lease = Lease(f"{next(self._counter)}-{secrets.token_hex(8)}", endpoint, now + self.ttl, now)
        self._leases[lease.lease_id] = lease
        self._changed()
        return lease

    def heartbeat(self, lease_id: str) -> bool:
        """Renew; False when the lease is unknown or already lapsed (the caller registers again)."""
        lease = self._leases.get(lease_id)
        now = self._clock()
        if lease is None:
            return False
        if lease.expires_at <= now:
            self.expire()
            return False
        lease.expires_at = now + self.ttl
        return True

    def deregister(self, lease_id: str) -> Endpoint | None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        self._changed()
        return lease.endpoint

    def expire(self) -> list[Endpoint]:
        """Drop every lapsed lease; returns their endpoints."""
        now = self._clock()
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
