"""bench.capacity's arithmetic on a small input checked by hand (no bench run): a results.json's
CPU summed per service, a write priced from a read, cores → instances, replicas, pools, Redis
operations and gateway memory; and the command on the committed inputs."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from bench.capacity import __main__ as capacity
from bench.capacity.model import STANDBY, load_measured, load_traffic, plan, route_cost

RESULTS = {
    "processes": [
        {"name": "gateway", "service": None},
        {"name": "auth-0", "service": "auth"},
        {"name": "auth-1", "service": "auth"},
    ],
    "cases": [
        {"key": "http-echo", "cpu_us_per_request": {"http-echo": 40.0}, "db_reads": None},
        {
            "key": "me",
            "cpu_us_per_request": {
                "gateway": 500.0,
                "auth-0": 100.0,
                "auth-1": 100.0,
                "postgres": 50.0,
                "postgres-standby": 200.0,
                "redis": 10.0,
            },
            "db_reads": {"primary_per_request": 0.5, "replica_per_request": 1.0},
        },
    ],
}

TRAFFIC = {
    "users": [60_000],
    "peak_factor": 2.0,
    "target_utilisation": 0.5,
    "min_instances": 2,
    "postgres_cores_per_server": 0.25,
    "min_replicas": 1,
    "max_connections": 200,
    "headroom_connections": 20,
    "pool_size": 20,
    "max_overflow": 30,
    "pgbouncer_pool_factor": 10.0,
    "pgbouncer_min_pool": 1,
    "held_connections_per_user": 0.5,
    "gateway_bytes_per_held_connection": 1000,
    "gateway_max_connections": 10_000,
    "cores_per_instance": {"gateway": 1, "envoy": 4, "control-plane": 1, "auth": 1},
    "routes": {
        "me": {"per_user_per_minute": 1.0, "service": "auth", "measured": "me", "redis_ops": 1},
        "write": {
            "per_user_per_minute": 0.3,
            "service": "auth",
            "priced_as": "me",
            "multiple": 2.0,
            "extra_service_us": 1000.0,
            "primary_db_us": 300.0,
            "primary_queries": 2.0,
            "redis_ops": 3,
        },
    },
}


def test_measured_sums_instances_per_service_and_skips_baselines() -> None:
    measured = load_measured(RESULTS, "test")
    assert measured.services == ("auth",)
    assert set(measured.costs) == {"me"}
    me = measured.costs["me"]
    assert me.cpu_us["auth"] == 200.0 and me.cpu_us["gateway"] == 500.0
    assert (me.primary_reads, me.replica_reads) == (0.5, 1.0)


def test_a_write_is_priced_from_a_read_with_its_database_work_on_the_primary() -> None:
    measured = load_measured(RESULTS, "test")
    write = load_traffic(TRAFFIC).routes[1]
    cost = route_cost(write, measured)
    assert cost.cpu_us["gateway"] == 1000.0  # 2 x 500
    assert cost.cpu_us["auth"] == 1400.0  # 2 x 200 + 1000 extra
    assert cost.cpu_us["postgres"] == 300.0 and cost.cpu_us[STANDBY] == 0.0
    assert (cost.primary_reads, cost.replica_reads) == (2.0, 0.0)


def test_plan_by_hand() -> None:
    p = plan(load_measured(RESULTS, "test"), load_traffic(TRAFFIC), 60_000)
    # 60,000 users x 1/min / 60 x peak 2 = 2,000/s; the write 0.3/min → 600/s.
    assert p.rps == pytest.approx({"me": 2000.0, "write": 600.0})
    # gateway 2,000 x 500 µs + 600 x 1,000 µs = 1.6 cores; at 50 % of 1 core each → ceil(3.2) = 4.
    assert p.cores["gateway"] == pytest.approx(1.6)
    assert p.gateway_by_cpu == 4 and p.gateway_by_connections == 3  # 30,000 held / 10,000
    assert p.instances["gateway"] == 4
    # auth 2,000 x 200 + 600 x 1,400 = 1.24 cores → ceil(2.48) = 3.
    assert p.cores["auth"] == pytest.approx(1.24)
    assert p.instances["auth"] == 3
    # No measured CPU: the minimums (2 Envoys, 2 control planes).
    assert p.instances["envoy"] == 2 and p.instances["control-plane"] == 2
    # Postgres primary 2,000 x 50 + 600 x 300 = 0.28 cores → ceil(0.56) = 1 core provisioned.
    assert p.cores["postgres"] == pytest.approx(0.28)
    assert p.primary_cores == 1
    # Standby 2,000 x 200 = 0.4 cores over 0.25-core servers at 50 % → ceil(3.2) = 4 replicas,
    # each 0.1 busy → ceil(0.2) = 1 core.
    assert p.replicas == 4 and p.replica_cores == 1
    # Reads: primary 2,000 x 0.5 + 600 x 2 = 2,200/s; replicas 2,000 x 1.0.
    assert p.primary_reads_s == pytest.approx(2200.0)
    assert p.replica_reads_s == pytest.approx(2000.0)
    # Pools: 3 instances x (20 + 30) = 150 direct ≤ 200 - 20; PgBouncer ceil(0.28 x 10) = 3 on the
    # primary, ceil(0.1 x 10) = 1 per replica.
    (auth,) = p.pools
    assert (auth.direct_primary, p.direct_connections, p.connection_budget) == (150, 150, 180)
    assert auth.busy_primary == pytest.approx(0.28) and auth.busy_replica == pytest.approx(0.1)
    assert (auth.pgbouncer_primary, auth.pgbouncer_replica) == (3, 1)
    # Redis 2,000 x 1 + 600 x 3; gateway memory 30,000 x 1,000 B.
    assert p.redis_ops_s == pytest.approx(3800.0)
    # Redis server 2,000 x 10 + 600 x 20 = 0.032 cores → 1 shard (the minimum).
    assert p.cores["redis"] == pytest.approx(0.032) and p.redis_shards == 1
    assert p.held_connections == 30_000 and p.gateway_memory_bytes == 30_000_000


def test_held_connections_can_decide_the_gateway_count() -> None:
    traffic = load_traffic({**TRAFFIC, "gateway_max_connections": 1000})
    p = plan(load_measured(RESULTS, "test"), traffic, 60_000)
    assert (p.gateway_by_cpu, p.gateway_by_connections, p.instances["gateway"]) == (4, 30, 30)


def test_default_results_is_the_newest_run_else_the_committed_figures(tmp_path: Path) -> None:
    assert capacity.default_results(tmp_path) == capacity.MEASURED
    for stamp in ("20261130T010000Z", "20261130T020000Z"):
        (tmp_path / ".run" / "bench" / stamp).mkdir(parents=True)
        (tmp_path / ".run" / "bench" / stamp / "results.json").write_text("{}")
    assert capacity.default_results(tmp_path) == tmp_path / ".run/bench/20261130T020000Z/results.json"


def test_the_committed_inputs_give_a_plan(capsys: pytest.CaptureFixture[str]) -> None:
    """measured.json (with its provenance) and traffic.toml agree: every route finds its case."""
    data = json.loads(capacity.MEASURED.read_text())
    assert {"command", "run_at", "commit"} <= set(data["provenance"])
    traffic = load_traffic(tomllib.loads(capacity.TRAFFIC.read_text()))
    assert traffic.users == (100_000, 1_000_000)
    assert capacity.main(["--results", str(capacity.MEASURED), "--users", "1000,2000"]) == 0
    out = capsys.readouterr().out
    assert "== 1,000 concurrent users ==" in out and "== 2,000 concurrent users ==" in out
    assert "assumed, not measured" in out
