"""Snapshot cache: which configuration each Envoy node should have, and what it did with it.

No gRPC here. The ADS servicer asks `snapshot_for(node)`, waits for changes with `subscribe`, and
reports every ACK and NACK; the cache keeps per node and type the version acknowledged and the
rejections (a NACKed version is recorded, logged and never resent — the servicer only answers
again once the snapshot version changes). A node without a snapshot of its own gets the default
one (every Envoy of the mesh shares its configuration); `set_snapshot(..., node_id=...)` gives
one node its own (tests use this to serve one Envoy a broken update).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from controlplane import resources as rs
from controlplane.snapshot import Snapshot, check_consistent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Nack:
    node_id: str
    type_url: str
    rejected_version: str
    # The version Envoy kept (what it still runs).
    kept_version: str
    error: str
    at: float

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "type": rs.SHORT_NAMES.get(self.type_url, self.type_url)}


class SnapshotCache:
    def __init__(self, max_nacks: int = 100) -> None:
        self._default: Snapshot | None = None
        self._per_node: dict[str, Snapshot] = {}
        self._listeners: list[Callable[[], None]] = []
        # node id → type url → acknowledged version
        self.acked: dict[str, dict[str, str]] = {}
        self.nacks: list[Nack] = []
        self._max_nacks = max_nacks
        # Nodes with an open stream (a node may briefly have two while Envoy reconnects).
        self.connected: dict[str, int] = {}
        self._acked_changed = asyncio.Event()

    # --- snapshots ---------------------------------------------------------------------------------

    def set_snapshot(self, snapshot: Snapshot, node_id: str | None = None, *, check: bool = True) -> None:
        """Publish (checked for consistency first unless check=False: tests serving a deliberately
        broken update). node_id None: the default for every node without its own."""
        if check:
            check_consistent(snapshot)
        if node_id is None:
            self._default = snapshot
        else:
            self._per_node[node_id] = snapshot
        self._notify()

    def clear_snapshot(self, node_id: str) -> None:
        self._per_node.pop(node_id, None)
        self._notify()

    def snapshot_for(self, node_id: str) -> Snapshot | None:
        return self._per_node.get(node_id, self._default)

    @property
    def default(self) -> Snapshot | None:
        return self._default

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """`listener()` after every published snapshot; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
        self._wake_ack_waiters()

    # --- stream bookkeeping ---------------------------------------------------------------------------

    def stream_opened(self, node_id: str) -> None:
        self.connected[node_id] = self.connected.get(node_id, 0) + 1
        self._wake_ack_waiters()

    def stream_closed(self, node_id: str) -> None:
        count = self.connected.get(node_id, 0) - 1
        if count > 0:
            self.connected[node_id] = count
        else:
            self.connected.pop(node_id, None)
        self._wake_ack_waiters()

    def record_ack(self, node_id: str, type_url: str, version: str) -> None:
        self.acked.setdefault(node_id, {})[type_url] = version
        self._wake_ack_waiters()

    def record_nack(self, node_id: str, type_url: str, rejected: str, kept: str, error: str) -> Nack:
        nack = Nack(node_id, type_url, rejected, kept, error, time.time())
        self.nacks.append(nack)
        del self.nacks[: -self._max_nacks]
        log.warning(
            "Envoy rejected a configuration (NACK); keeping it unsent until the snapshot changes",
            extra={"fields": nack.to_dict()},
        )
        return nack

    def _wake_ack_waiters(self) -> None:
        self._acked_changed.set()
        self._acked_changed = asyncio.Event()

    def in_sync(self, type_url: str) -> bool:
        """Every connected node acknowledged the current version of its snapshot for the type."""
        for node_id in self.connected:
            snapshot = self.snapshot_for(node_id)
            if snapshot is None or self.acked.get(node_id, {}).get(type_url) != snapshot.version(type_url):
                return False
        return True

    async def wait_in_sync(self, type_url: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait (bounded) until `in_sync(type_url)`; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.in_sync(type_url):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            event = self._acked_changed
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return self.in_sync(type_url)
        return True

    def status(self) -> dict[str, object]:
        nodes = set(self.acked) | set(self.connected) | set(self._per_node)
        out: dict[str, object] = {}
        for node_id in sorted(nodes):
            snapshot = self.snapshot_for(node_id)
            out[node_id] = {
                "connected": node_id in self.connected,
                "own_snapshot": node_id in self._per_node,
                "versions": {rs.SHORT_NAMES[t]: v for t, v in (snapshot.versions.items() if snapshot else ())},
                "acked": {rs.SHORT_NAMES.get(t, t): v for t, v in self.acked.get(node_id, {}).items()},
            }
        return {
            "default_versions": {rs.SHORT_NAMES[t]: v for t, v in self._default.versions.items()}
            if self._default
            else None,
            "nodes": out,
            "nacks": len(self.nacks),
        }
