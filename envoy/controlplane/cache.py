"""Snapshot cache: which configuration each xDS node should have, and what it did with it.

No gRPC here. The ADS servicer asks `snapshot_for(node)`, waits for changes with `subscribe`, and
reports every ACK and NACK; the cache keeps per node and type the version acknowledged and the
rejections (a NACKed version is recorded, logged and never resent — the servicer only answers
again once the snapshot version changes).

Nodes are of a kind: ENVOY (every Envoy of the mesh) or PROXYLESS (gRPC's own xDS client in the
gateway: api_listeners instead of a socket listener, see proxyless.py). A node without a snapshot
of its own gets the default snapshot of its kind; `set_snapshot(..., node_id=...)` gives one node
its own (tests use this to serve one Envoy a broken update).

ACKs are also kept per stream: a gRPC process opens one ADS stream per channel target, all under
one node id, and `in_sync` (what Deregister waits for) must hear from every stream that watches a
type, not from whichever of them answered first.
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

ENVOY = "envoy"
PROXYLESS = "proxyless"


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


@dataclass
class StreamView:
    """What one open ADS stream watches and acknowledged (type url → version)."""

    node_id: str
    watching: set[str]
    acked: dict[str, str]


class SnapshotCache:
    def __init__(self, max_nacks: int = 100) -> None:
        self._defaults: dict[str, Snapshot] = {}
        self._per_node: dict[str, Snapshot] = {}
        # node id → kind (ENVOY or PROXYLESS), learnt from the node of its first stream.
        self.kinds: dict[str, str] = {}
        # stream id → what it watches and acknowledged (streams that told their id).
        self.streams: dict[int, StreamView] = {}
        self._listeners: list[Callable[[], None]] = []
        # node id → type url → acknowledged version
        self.acked: dict[str, dict[str, str]] = {}
        self.nacks: list[Nack] = []
        self._max_nacks = max_nacks
        # Nodes with an open stream (a node may briefly have two while Envoy reconnects).
        self.connected: dict[str, int] = {}
        self._acked_changed = asyncio.Event()

    # --- snapshots ---------------------------------------------------------------------------------

    def set_snapshot(
        self, snapshot: Snapshot, node_id: str | None = None, *, kind: str = ENVOY, check: bool = True
    ) -> None:
        """Publish (checked for consistency first unless check=False: tests serving a deliberately
        broken update). node_id None: the default for every node of `kind` without its own."""
        if check:
            check_consistent(snapshot)
        if node_id is None:
            self._defaults[kind] = snapshot
        else:
            self._per_node[node_id] = snapshot
        self._notify()

    def clear_snapshot(self, node_id: str) -> None:
        self._per_node.pop(node_id, None)
        self._notify()

    def snapshot_for(self, node_id: str) -> Snapshot | None:
        own = self._per_node.get(node_id)
        return own if own is not None else self._defaults.get(self.kinds.get(node_id, ENVOY))

    @property
    def default(self) -> Snapshot | None:
        """The default snapshot of Envoy nodes."""
        return self._defaults.get(ENVOY)

    def default_for(self, kind: str) -> Snapshot | None:
        return self._defaults.get(kind)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """`listener()` after every published snapshot; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
        self._wake_ack_waiters()

    # --- stream bookkeeping ---------------------------------------------------------------------------

    def stream_opened(self, node_id: str, *, kind: str = ENVOY, stream_id: int | None = None) -> None:
        self.kinds[node_id] = kind
        self.connected[node_id] = self.connected.get(node_id, 0) + 1
        if stream_id is not None:
            self.streams[stream_id] = StreamView(node_id, set(), {})
        self._wake_ack_waiters()

    def stream_closed(self, node_id: str, *, stream_id: int | None = None) -> None:
        count = self.connected.get(node_id, 0) - 1
        if count > 0:
            self.connected[node_id] = count
        else:
            self.connected.pop(node_id, None)
        if stream_id is not None:
            self.streams.pop(stream_id, None)
        self._wake_ack_waiters()

    def stream_watches(self, stream_id: int, type_url: str) -> None:
        """The stream asked for `type_url`: from now on `in_sync(type_url)` waits for its ACK."""
        view = self.streams.get(stream_id)
        if view is not None and type_url not in view.watching:
            view.watching.add(type_url)
            self._wake_ack_waiters()

    def record_ack(self, node_id: str, type_url: str, version: str, *, stream_id: int | None = None) -> None:
        self.acked.setdefault(node_id, {})[type_url] = version
        view = self.streams.get(stream_id) if stream_id is not None else None
        if view is not None:
            view.acked[type_url] = version
        self._wake_ack_waiters()

    def record_nack(self, node_id: str, type_url: str, rejected: str, kept: str, error: str) -> Nack:
        nack = Nack(node_id, type_url, rejected, kept, error, time.time())
        self.nacks.append(nack)
        del self.nacks[: -self._max_nacks]
        log.warning(
            "a node rejected a configuration (NACK); keeping it unsent until the snapshot changes",
            extra={"fields": nack.to_dict()},
        )
        return nack

    def _wake_ack_waiters(self) -> None:
        self._acked_changed.set()
        self._acked_changed = asyncio.Event()

    def in_sync(self, type_url: str) -> bool:
        """Every connected node acknowledged the current version of its snapshot for the type: each
        of its streams that watches the type (a node whose streams are not tracked: its last ACK)."""
        tracked = {view.node_id for view in self.streams.values()}
        for view in self.streams.values():
            if type_url not in view.watching:
                continue  # will get the current version when it asks
            snapshot = self.snapshot_for(view.node_id)
            if snapshot is None or view.acked.get(type_url) != snapshot.version(type_url):
                return False
        for node_id in self.connected:
            if node_id in tracked:
                continue
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
                "kind": self.kinds.get(node_id, ENVOY),
                "connected": node_id in self.connected,
                "streams": sum(1 for view in self.streams.values() if view.node_id == node_id),
                "own_snapshot": node_id in self._per_node,
                "versions": {rs.SHORT_NAMES[t]: v for t, v in (snapshot.versions.items() if snapshot else ())},
                "acked": {rs.SHORT_NAMES.get(t, t): v for t, v in self.acked.get(node_id, {}).items()},
            }
        return {
            "default_versions": {
                kind: {rs.SHORT_NAMES[t]: v for t, v in snapshot.versions.items()}
                for kind, snapshot in sorted(self._defaults.items())
            }
            or None,
            "nodes": out,
            "nacks": len(self.nacks),
        }
