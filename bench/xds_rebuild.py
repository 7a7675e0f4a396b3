"""The control plane's rebuild after one endpoint change, with 1,000 registered instances: everything
built again (the way before issue 10) against the endpoint assignments only (MeshSnapshots).

    python -m bench.xds_rebuild [--instances 1000] [--rounds 15]

A Registry (its own clock, no network) holds `--instances` instances spread round robin over the
topology's services, in three zones, each with its instance name as metadata, as registrations
carry. One endpoint change is one more instance registering; it deregisters after the round, so
every round starts from the same state. Both ways start from `registry.endpoints()`, as the control
plane's rebuild does, and make Envoy's snapshot and the proxyless clients' one:

- full: `build_snapshot` + `build_proxyless_snapshot`: clusters, listeners, route configurations
  and assignments built again for each snapshot, every type's version hashed again;
- EDS only: `MeshSnapshots.build`, what the control plane runs now: the assignments built once for
  both snapshots — only the changed service's; the others are the previous objects — and hashed,
  next to the clusters, listeners and routes (and their versions) built at start-up. After each
  round the deregistration is rebuilt too, untimed, as the control plane would.

Their versions are checked equal first (the same snapshots either way). The two run interleaved,
`--rounds` times; the medians are printed, then the serialized size of each snapshot per type (what
an EDS push carries against the rest). The machine is shared: compare within one run.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from controlplane import resources as rs
from controlplane.registry import Registry
from controlplane.snapshot import MeshSnapshots, Snapshot, build_proxyless_snapshot, build_snapshot

from mesh import envoy_config
from mesh.topology import SERVICES

LISTEN = ("127.0.0.1", 10000)
ZONES = ("zone-a", "zone-b", "zone-c")


def populated(instances: int) -> Registry:
    registry = Registry(ttl=3600.0, clock=lambda: 0.0)  # leases never lapse during the run
    for i in range(instances):
        spec = SERVICES[i % len(SERVICES)]
        host = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        registry.register(spec.name, host, 50051, ZONES[i % len(ZONES)], {"instance": f"{spec.name}-{i}"})
    return registry


def timed_ms(rebuild: Callable[[], Any]) -> float:
    gc.collect()
    started = time.perf_counter()
    rebuild()
    return (time.perf_counter() - started) * 1e3


def sizes(snapshot: Snapshot) -> dict[str, tuple[int, int]]:
    """type url → (resources, serialized bytes)."""
    return {
        t: (len(snapshot.resources[t]), sum(len(m.SerializeToString()) for m in snapshot.resources[t].values()))
        for t in rs.PUSH_ORDER
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    registry = populated(args.instances)
    idempotent = envoy_config.idempotent_methods()  # read once by the control plane too

    def full() -> tuple[Snapshot, Snapshot]:
        endpoints = registry.endpoints()
        return (
            build_snapshot(endpoints, listen=LISTEN, idempotent_methods=idempotent),
            build_proxyless_snapshot(endpoints, idempotent_methods=idempotent),
        )

    started = time.perf_counter()
    snapshots = MeshSnapshots(listen=LISTEN, idempotent_methods=idempotent)
    topology_ms = (time.perf_counter() - started) * 1e3

    def eds_only() -> tuple[Snapshot, Snapshot]:
        return snapshots.build(registry.endpoints())

    old_envoy, old_grpc = full()
    new_envoy, new_grpc = eds_only()
    if old_envoy.versions != new_envoy.versions or old_grpc.versions != new_grpc.versions:
        raise SystemExit("the two ways built different snapshots")

    timings: dict[str, list[float]] = {"full": [], "eds": []}
    for round_ in range(args.rounds):
        spec = SERVICES[round_ % len(SERVICES)]
        lease = registry.register(spec.name, "10.255.255.1", 50051 + round_, ZONES[0], {"instance": "new"})
        pair = [("full", full), ("eds", eds_only)]
        for name, rebuild in pair if round_ % 2 == 0 else reversed(pair):
            timings[name].append(timed_ms(rebuild))
        registry.deregister(lease.lease_id)
        eds_only()  # the deregistration is an endpoint change too: the next round starts in step

    counts = {name: len(eps) for name, eps in registry.endpoints().items()}
    full_ms, eds_ms = statistics.median(timings["full"]), statistics.median(timings["eds"])
    print(
        f"{args.instances} instances in the registry ("
        + ", ".join(f"{name} {count}" for name, count in counts.items())
        + f"; {len(ZONES)} zones); one endpoint change = one more instance registers"
    )
    print(f"one rebuild (Envoy's + the proxyless snapshot), median of {args.rounds} interleaved rounds:")
    print(f"  full (everything built again)   {full_ms:8.2f} ms")
    print(f"  EDS only (assignments)          {eds_ms:8.2f} ms   {full_ms / eds_ms:.1f}x faster")
    print(f"  (clusters, listeners, routes of both snapshots, built once at start-up: {topology_ms:.2f} ms)")
    print("serialized size per type (resources, bytes):")
    envoy_sizes, grpc_sizes = sizes(new_envoy), sizes(new_grpc)
    print(f"  {'type':<6}{'Envoy':>22}{'proxyless':>22}")
    for type_url in rs.PUSH_ORDER:
        (en, eb), (gn, gb) = envoy_sizes[type_url], grpc_sizes[type_url]
        print(f"  {rs.SHORT_NAMES[type_url]:<6}{en:>8} {eb:>12,} B{gn:>8} {gb:>12,} B")
    rest = sum(b for t, (_, b) in envoy_sizes.items() if t != rs.ENDPOINT)
    rest += sum(b for t, (_, b) in grpc_sizes.items() if t != rs.ENDPOINT)
    print(f"  rebuilt per change: {envoy_sizes[rs.ENDPOINT][1]:,} B of assignments (shared by both snapshots);")
    print(f"  reused: {rest:,} B of clusters, listeners and routes")


if __name__ == "__main__":
    main()
