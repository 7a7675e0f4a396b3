"""The control plane's admin HTTP port (loopback): what it serves and what Envoy did with it.

GET /healthz    200 once the first snapshot is published (after the warm-up), 503 before
GET /status     snapshot versions per node, versions each node acknowledged
GET /nacks      every rejected update: node, type, rejected and kept versions, Envoy's error
GET /registry   registered instances: service, address, zone, metadata, lease expiry

No page shows a lease id, nor anything else that lets a caller act on the registry: this port is
plain HTTP with no caller identity, and SPEC §12 defends it as if an attacker could reach it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from controlplane.cache import SnapshotCache
from controlplane.registry import Registry


class Admin:
    def __init__(self, cache: SnapshotCache, registry: Registry, ready: Callable[[], bool]) -> None:
        self.cache = cache
        self.registry = registry
        self.ready = ready

    def page(self, path: str) -> tuple[int, Any]:
        if path == "/healthz":
            return (200, {"ok": True}) if self.ready() else (503, {"ok": False, "reason": "warming up"})
        if path == "/status":
            return 200, self.cache.status()
        if path == "/nacks":
            return 200, [n.to_dict() for n in self.cache.nacks]
        if path == "/registry":
            now = time.monotonic()
            return 200, [
                {
                    "service": lease.endpoint.service,
                    "address": lease.endpoint.address,
                    "zone": lease.endpoint.zone,
                    "metadata": dict(lease.endpoint.metadata),
                    "expires_in": round(lease.expires_at - now, 3),
                }
                for lease in self.registry.leases()
            ]
        return 404, {"error": "not found"}

    def response(self, path: str) -> tuple[int, str, bytes]:
        status, payload = self.page(path)
        return status, "application/json", json.dumps(payload, indent=1).encode() + b"\n"
