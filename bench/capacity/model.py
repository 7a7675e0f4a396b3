"""The capacity model's arithmetic: measured cost per request x a traffic model → a deployment.

Pure functions over plain data (no I/O): `load_measured` turns a bench results.json into the cost
of one request of each measured route, per kind of process; `plan` multiplies it by the traffic
model's peak request rate for one user count and rounds it up into instances, database sizing,
pools, Redis operations and gateway memory. Every figure it prints comes from one of the two
inputs, and the inputs are printed with it.

The rule everything follows: cores(kind) = Σ_route peak req/s(route) x CPU µs/req(route, kind) / 1e6,
and a kind that runs as instances gets ceil(cores / (cores per instance x target utilisation))
of them, never fewer than its minimum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GATEWAY, ENVOY, CONTROL_PLANE = "gateway", "envoy", "control-plane"
POSTGRES, STANDBY, REDIS = "postgres", "postgres-standby", "redis"


@dataclass(frozen=True)
class RouteCost:
    """What one request of a route cost, measured (or priced from a measured one)."""

    # Process kind (gateway, envoy, control-plane, a service name, postgres, postgres-standby,
    # redis) → CPU µs per request; a service's figure is the sum over its instances.
    cpu_us: Mapping[str, float]
    primary_reads: float  # database reads per request on the primary
    replica_reads: float  # … and on the standby(s)


@dataclass(frozen=True)
class Measured:
    source: str
    costs: Mapping[str, RouteCost]  # bench case key → cost
    services: tuple[str, ...]  # service names, in the bench's order


def load_measured(results: Mapping[str, Any], source: str) -> Measured:
    """A bench results.json (or bench/capacity/measured.json: the same plus `provenance`)."""
    service_of = {p["name"]: p["service"] for p in results["processes"] if p.get("service")}
    services = tuple(dict.fromkeys(service_of.values()))
    costs: dict[str, RouteCost] = {}
    for case in results["cases"]:
        if case["key"] in ("grpc-echo", "http-echo"):
            continue
        cpu: dict[str, float] = {}
        for name, us in case["cpu_us_per_request"].items():
            kind = service_of.get(name, name)
            cpu[kind] = cpu.get(kind, 0.0) + us
        reads = case.get("db_reads") or {}
        costs[case["key"]] = RouteCost(
            cpu_us=cpu,
            primary_reads=reads.get("primary_per_request") or 0.0,
            replica_reads=reads.get("replica_per_request") or 0.0,
        )
    return Measured(source=source, costs=costs, services=services)


@dataclass(frozen=True)
class Route:
    """One route of the traffic model (traffic.toml's [routes.<name>])."""

    name: str
    per_user_per_minute: float
    service: str
    redis_ops: float  # Redis commands per request (assumed: the bench does not count them)
    measured: str | None = None  # bench case measuring it …
    priced_as: str | None = None  # … or the measured case it is priced from (a write)
    multiple: float = 1.0  # priced: every process's CPU = multiple x the case's
    extra_service_us: float = 0.0  # priced: CPU added on its service (e.g. argon2 at log-in)
    primary_db_us: float = 0.0  # priced: Postgres backend µs per request, all on the primary
    primary_queries: float = 0.0  # priced: statements per request on the primary

    @property
    def assumed(self) -> bool:
        return self.measured is None


@dataclass(frozen=True)
class Traffic:
    users: tuple[int, ...]
    peak_factor: float  # peak rate / mean rate of the active users
    target_utilisation: float  # planned CPU utilisation of a core at peak
    min_instances: int  # per service, gateway, Envoy (one may die: SPEC §10)
    cores_per_instance: Mapping[str, float]  # kind → cores one instance uses (Python: 1)
    postgres_cores_per_server: float
    min_replicas: int
    max_connections: int  # Postgres server max_connections, primary and each replica
    headroom_connections: int  # kept free of the services' pools (superuser, replication, admin)
    pool_size: int  # per instance, per database target (SPEC §9 default 20)
    max_overflow: int  # (SPEC §9 default 30)
    pgbouncer_pool_factor: float  # server connections per busy backend (waits, I/O, bursts)
    pgbouncer_min_pool: int
    held_connections_per_user: float
    gateway_bytes_per_held_connection: int  # of the gateway's RSS (python -m bench.held_connections)
    gateway_max_connections: int  # GATEWAY_MAX_CONNECTIONS per gateway process
    routes: tuple[Route, ...]


def load_traffic(data: Mapping[str, Any]) -> Traffic:
    routes = tuple(Route(name=name, **spec) for name, spec in data["routes"].items())
    fields = {k: v for k, v in data.items() if k != "routes"}
    fields["users"] = tuple(fields["users"])
    return Traffic(routes=routes, **fields)


def route_cost(route: Route, measured: Measured) -> RouteCost:
    """The measured case's cost, or for a priced route: multiple x the case's CPU in every process,
    its extra µs on its service, and its database work on the primary (stated, not measured)."""
    if route.measured is not None:
        if route.measured not in measured.costs:
            raise KeyError(f"route {route.name}: no measured case {route.measured!r} in {measured.source}")
        return measured.costs[route.measured]
    if route.priced_as is None or route.priced_as not in measured.costs:
        raise KeyError(f"route {route.name}: no measured case {route.priced_as!r} to price it from")
    base = measured.costs[route.priced_as]
    cpu = {k: v * route.multiple for k, v in base.cpu_us.items() if k not in (POSTGRES, STANDBY)}
    cpu[route.service] = cpu.get(route.service, 0.0) + route.extra_service_us
    cpu[POSTGRES] = route.primary_db_us
    cpu[STANDBY] = 0.0
    return RouteCost(cpu_us=cpu, primary_reads=route.primary_queries, replica_reads=0.0)


@dataclass(frozen=True)
class Pools:
    """Database connections of one service's instances, direct or behind PgBouncer."""

    service: str
    instances: int
    direct_primary: int  # instances x (pool_size + max_overflow)
    busy_primary: float  # Little's law: req/s x backend seconds per request
    busy_replica: float  # per replica
    pgbouncer_primary: int  # PgBouncer server pool for this database on the primary
    pgbouncer_replica: int  # … on each replica


@dataclass(frozen=True)
class Plan:
    users: int
    rps: Mapping[str, float]  # route → peak req/s
    cores: Mapping[str, float]  # kind → CPU cores busy at peak
    instances: Mapping[str, int]  # gateway, envoy, control-plane, each service
    primary_reads_s: float
    replica_reads_s: float
    primary_cores: int  # provisioned (at target utilisation)
    replicas: int
    replica_cores: int  # per replica
    pools: tuple[Pools, ...]
    direct_connections: int  # every instance's full pools on the primary
    connection_budget: int  # max_connections - headroom
    redis_ops_s: float
    redis_shards: int  # Redis executes commands on one thread: one core per shard
    held_connections: float
    gateway_memory_bytes: float
    gateway_by_cpu: int  # gateways the CPU needs …
    gateway_by_connections: int  # … and the held connections need (GATEWAY_MAX_CONNECTIONS each)


def instances_for(cores: float, per_instance: float, utilisation: float, minimum: int) -> int:
    return max(minimum, math.ceil(cores / (per_instance * utilisation) - 1e-9))


def plan(measured: Measured, traffic: Traffic, users: int) -> Plan:
    costs = {r.name: route_cost(r, measured) for r in traffic.routes}
    rps = {r.name: users * r.per_user_per_minute / 60 * traffic.peak_factor for r in traffic.routes}
    kinds = [GATEWAY, ENVOY, CONTROL_PLANE, *measured.services, POSTGRES, STANDBY, REDIS]
    cores = {k: sum(rps[r] * costs[r].cpu_us.get(k, 0.0) for r in rps) / 1e6 for k in kinds}
    u = traffic.target_utilisation
    held = users * traffic.held_connections_per_user
    instances: dict[str, int] = {}
    for kind in (GATEWAY, ENVOY, *measured.services):
        instances[kind] = instances_for(cores[kind], traffic.cores_per_instance[kind], u, traffic.min_instances)
    gateway_by_cpu = instances[GATEWAY]
    gateway_by_connections = math.ceil(held / traffic.gateway_max_connections - 1e-9)
    instances[GATEWAY] = max(gateway_by_cpu, gateway_by_connections)
    # The control plane is off the request path (xDS, registrations): one active + one standby.
    instances[CONTROL_PLANE] = instances_for(cores[CONTROL_PLANE], traffic.cores_per_instance[CONTROL_PLANE], u, 2)
    pg = traffic.postgres_cores_per_server
    primary_cores = max(1, math.ceil(cores[POSTGRES] / u - 1e-9))
    replicas = instances_for(cores[STANDBY], pg, u, traffic.min_replicas)
    replica_cores = max(1, math.ceil(cores[STANDBY] / replicas / u - 1e-9))
    pools = []
    for service in measured.services:
        mine = [r.name for r in traffic.routes if r.service == service]
        busy_p = sum(rps[r] * costs[r].cpu_us.get(POSTGRES, 0.0) for r in mine) / 1e6
        busy_r = sum(rps[r] * costs[r].cpu_us.get(STANDBY, 0.0) for r in mine) / 1e6 / replicas
        pools.append(
            Pools(
                service=service,
                instances=instances[service],
                direct_primary=instances[service] * (traffic.pool_size + traffic.max_overflow),
                busy_primary=busy_p,
                busy_replica=busy_r,
                pgbouncer_primary=max(traffic.pgbouncer_min_pool, math.ceil(busy_p * traffic.pgbouncer_pool_factor)),
                pgbouncer_replica=max(traffic.pgbouncer_min_pool, math.ceil(busy_r * traffic.pgbouncer_pool_factor)),
            )
        )
    return Plan(
        users=users,
        rps=rps,
        cores=cores,
        instances=instances,
        primary_reads_s=sum(rps[r] * costs[r].primary_reads for r in rps),
        replica_reads_s=sum(rps[r] * costs[r].replica_reads for r in rps),
        primary_cores=primary_cores,
        replicas=replicas,
        replica_cores=replica_cores,
        pools=tuple(pools),
        direct_connections=sum(p.direct_primary for p in pools),
        connection_budget=traffic.max_connections - traffic.headroom_connections,
        redis_ops_s=sum(rps[r.name] * r.redis_ops for r in traffic.routes),
        redis_shards=instances_for(cores[REDIS], 1.0, u, 1),
        held_connections=held,
        gateway_memory_bytes=held * traffic.gateway_bytes_per_held_connection,
        gateway_by_cpu=gateway_by_cpu,
        gateway_by_connections=gateway_by_connections,
    )


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def render_inputs(measured: Measured, traffic: Traffic) -> list[str]:
    """Every input the plans use: the measured cost per request, then the traffic model."""
    kinds = [GATEWAY, ENVOY, CONTROL_PLANE, *measured.services, POSTGRES, STANDBY, REDIS]
    lines = [f"measured: {measured.source}", "", "per request (CPU µs by process kind; reads; Redis commands):"]
    costs = [route_cost(r, measured) for r in traffic.routes]
    rows = [
        ["rate/user/min", *(f"{r.per_user_per_minute:g}" for r in traffic.routes)],
        ["from", *(r.measured or f"{r.multiple:g}x {r.priced_as}*" for r in traffic.routes)],
    ]
    rows += [[k, *(_n(c.cpu_us.get(k, 0.0)) for c in costs)] for k in kinds]
    rows += [
        ["DB reads primary", *(f"{c.primary_reads:.3f}" for c in costs)],
        ["DB reads replica", *(f"{c.replica_reads:.3f}" for c in costs)],
        ["Redis commands*", *(f"{r.redis_ops:g}" for r in traffic.routes)],
    ]
    lines += _grid(["", *(r.name for r in traffic.routes)], rows)
    lines.append(
        "  * assumed, not measured: Redis commands per request; a priced route (a write) costs multiple x the"
        " read\n    in every process, + extra µs on its service; its Postgres µs and statements are stated"
        " (primary only)"
    )
    t = traffic
    lines += [
        "",
        "traffic model:",
        f"  peak factor {t.peak_factor:g} x the mean rate; target CPU utilisation {t.target_utilisation:.0%};"
        f" minimum {t.min_instances} instances of each service, gateway and Envoy",
        "  cores per instance: " + ", ".join(f"{k} {v:g}" for k, v in t.cores_per_instance.items()),
        f"  Postgres: {t.postgres_cores_per_server:g} cores per replica server, at least {t.min_replicas} replica(s);"
        f" max_connections {t.max_connections} - headroom {t.headroom_connections};"
        f" pools {t.pool_size} + overflow {t.max_overflow} per instance",
        f"  PgBouncer (transaction mode): server pool = max({t.pgbouncer_min_pool}, ceil(busy backends x"
        f" {t.pgbouncer_pool_factor:g})) per database",
        f"  held connections {t.held_connections_per_user:g} per user; gateway memory"
        f" {t.gateway_bytes_per_held_connection:,} B per held connection (measured, bench.held_connections);"
        f" GATEWAY_MAX_CONNECTIONS {t.gateway_max_connections:,}",
    ]
    return lines


def render_plan(p: Plan, traffic: Traffic) -> list[str]:
    lines = [f"== {p.users:,} concurrent users ==", ""]
    lines += _grid(
        ["route", "peak req/s"], [[r, _n(v)] for r, v in p.rps.items()] + [["total", _n(sum(p.rps.values()))]]
    )
    lines.append("")
    rows = []
    for kind, cores in p.cores.items():
        count = p.instances.get(kind)
        per = traffic.cores_per_instance.get(kind)
        if kind == POSTGRES:
            rows.append([kind + " (primary)", f"{cores:.2f}", "1", f"{p.primary_cores} core(s)"])
        elif kind == STANDBY:
            rows.append(["postgres replicas", f"{cores:.2f}", str(p.replicas), f"{p.replica_cores} core(s) each"])
        elif kind == REDIS:
            rows.append([kind, f"{cores:.2f}", str(p.redis_shards), "1 core each (one command thread)"])
        else:
            rows.append([kind, f"{cores:.2f}", f"{count:,}", f"{per:g} core(s) each"])
    lines += _grid(["process", "cores at peak", "instances", "sizing"], rows)
    lines += [
        "",
        f"database reads/s: primary {_n(p.primary_reads_s)}, replicas {_n(p.replica_reads_s)}"
        f" ({_n(p.replica_reads_s / p.replicas)} per replica)",
        f"connection budget per Postgres server: {p.connection_budget} (max_connections - headroom)",
    ]
    fits = "fits" if p.direct_connections <= p.connection_budget else "DOES NOT FIT: PgBouncer needed"
    lines.append(
        f"  direct pools: Σ instances x (pool + overflow) = {p.direct_connections:,} on the primary"
        f" (and on each replica) → {fits}"
    )
    lines += _grid(
        ["service", "instances", "direct", "busy primary", "busy replica", "pgbouncer primary", "pgbouncer replica"],
        [
            [
                x.service,
                str(x.instances),
                str(x.direct_primary),
                f"{x.busy_primary:.2f}",
                f"{x.busy_replica:.2f}",
                str(x.pgbouncer_primary),
                str(x.pgbouncer_replica),
            ]
            for x in p.pools
        ],
        indent="  ",
    )
    bouncer = sum(x.pgbouncer_primary for x in p.pools)
    bouncer_r = sum(x.pgbouncer_replica for x in p.pools)
    lines += [
        f"  behind PgBouncer: {bouncer} server connections on the primary, {bouncer_r} on each replica"
        f" (≤ {p.connection_budget}: {'fits' if max(bouncer, bouncer_r) <= p.connection_budget else 'DOES NOT FIT'})",
        f"Redis: {_n(p.redis_ops_s)} operations/s at peak",
        f"gateway instances: {p.gateway_by_cpu} for the CPU, {p.gateway_by_connections} for the held connections"
        f" ({traffic.gateway_max_connections:,} each) → {p.instances[GATEWAY]}",
        f"gateway memory: {_n(p.held_connections)} held connections → {p.gateway_memory_bytes / 2**30:,.1f} GiB in all,"
        f" {p.gateway_memory_bytes / p.instances[GATEWAY] / 2**20:,.0f} MiB per gateway instance"
        " (socket buffers in the kernel not included)",
    ]
    return lines


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [f"{row[0]:<{widths[0]}}"] + [f"{c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=True)]
        out.append((indent + "  ".join(cells)).rstrip())
    return out
