"""`make bench` (= `python3 -m launcher bench` = `python -m bench`): the hot reads, measured.

    python -m bench [--seconds 10] [--warmup 2] [--clients 32] [--only me,inbox,...] [--attach] [--users N]
                     [--catch-up-timeout 300] [--plaintext]

1. Starts its own mesh (bench/mesh.py: free ports, own databases dropped at the end, the gateway's
   rate limiter in the path with limits raised out of the way) — or, with --attach, measures the
   `make up` answering on the default ports.
2. Seeds SPEC §11's volume in SQL (bench/seed.py: the shape and ids of side-by-side's seed),
   skipped where it is already there; then, when the instances read from a streaming standby
   (bench/replicas.py), waits until it has replayed the seed and every instance reports it up.
3. Picks side-by-side's measured user (bench/cases.py) and logs in through the gateway.
4. For each case (bench/cases.py: two baselines, three HTTP routes through the gateway, GetMe over
   gRPC through Envoy): a one-request check of the answer, a discarded h2load warm-up run, then the
   measured h2load run (32 clients, HTTP/1.1 for HTTP, h2c for gRPC) with every mesh process's CPU
   sampled from /proc around it, and the instances' database reads (primary / replica) and
   replica fallbacks counted from their /metrics around it. Any non-2xx answer (or a gRPC 2xx
   the service did not count OK) fails the bench, after the table is printed.
5. Prints the table (bench/report.py) and writes .run/bench/<UTC time>/results.json, summary.txt,
   h2load's own reports, and (own mesh) every process's log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import h2load
from bench.cases import ALL_KEYS, Case, User, build_cases, pick_user
from bench.cpu import CpuMeter, MachineMeter, redis_pid
from bench.mesh import BenchMesh, grpc_ok_count, login, open_mesh
from bench.replicas import ReadCounts, wait_caught_up
from bench.report import POSTGRES, REDIS, STANDBY, Measured, render, write_results
from bench.seed import SEED_PASSWORD, Volume, seed_and_describe
from launcher import infra as infra_mod
from launcher.bootstrap import REPO
from launcher.keys import ensure_dev_keys
from launcher.process import free_port, http_ok, port_open


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per case (10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of the discarded warm-up run per case (2)")
    parser.add_argument("--clients", type=int, default=32, help="h2load clients, one request in flight each (32)")
    parser.add_argument("--only", default=",".join(ALL_KEYS), help=f"cases, comma-separated: {','.join(ALL_KEYS)}")
    parser.add_argument("--attach", action="store_true", help="measure the running `make up` (default ports)")
    parser.add_argument("--users", type=int, default=10_000, help="seeded users; everything else follows (10000)")
    parser.add_argument(
        "--catch-up-timeout",
        type=float,
        default=300.0,
        help="seconds to wait after seeding for the standby to replay it and the instances to use it (300)",
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        help="own mesh without mutual TLS (MESH_PLAINTEXT=1): the baseline of TLS's cost per call",
    )
    args = parser.parse_args(argv)
    args.only = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = sorted(set(args.only) - set(ALL_KEYS))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(ALL_KEYS)}")
    try:
        Volume(args.users)
    except ValueError as exc:
        parser.error(f"--users: {exc}")
    return args


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h2load.ensure_h2load()
    infra = infra_mod.ensure(install=True)
    keys = ensure_dev_keys()
    started = datetime.now(UTC)
    out_dir = REPO / ".run" / "bench" / started.strftime("%Y%m%dT%H%M%SZ")
    log(f"results and logs: {out_dir}")
    if not args.plaintext and not args.attach and "grpc-me" in args.only:
        # h2load cannot present a client certificate, and Envoy's listener requires one.
        log("grpc-me left out: Envoy's listener requires a client certificate (run with --plaintext to measure it)")
        args.only = [key for key in args.only if key != "grpc-me"]
    with open_mesh(infra, keys, out_dir, attach=args.attach, mesh_tls=not args.plaintext) as mesh:
        log(seed_and_describe(mesh.dsns, Volume(users=args.users)))
        # Reads of seeded users may go to the standby as soon as it is within its lag bound (the
        # seed recorded no positions): measure only once it has all of the seed.
        mesh.standbys = wait_caught_up(mesh.postgres, mesh.admin_addresses(), timeout=args.catch_up_timeout, log=log)
        user = asyncio.run(pick_user(mesh.dsns))
        token = login(mesh.gateway_url, user.email, SEED_PASSWORD)
        log(f"measured user {user.username}: inbox {user.inbox}, {user.connections} connections; logged in")
        baselines = start_baselines(mesh, args.only)
        cases = build_cases(
            gateway_url=mesh.gateway_url,
            envoy_grpc=mesh.envoy_grpc,
            grpc_echo=baselines.get("grpc-echo", ("", 0))[0],
            http_echo=baselines.get("http-echo", ("", 0))[0],
            user=user,
            token=token,
        )
        meter_pids = mesh.pids() | {key: pid for key, (_, pid) in baselines.items()}
        redis = redis_pid(mesh.redis_url)
        rows = []
        for case in (c for c in cases if c.key in args.only):
            rows.append(measure(case, mesh, meter_pids, redis, args, out_dir))
    table = render(rows, mesh.processes, describe_run(args, started, user))
    print("\n" + table)
    recorded = ("seconds", "warmup", "clients", "only", "attach", "users", "catch_up_timeout")
    settings = {key: getattr(args, key) for key in recorded}
    path = write_results(out_dir, rows, mesh.processes, user, settings, table)
    print(f"\nresults: {path}")
    failed = [m for m in rows if m.problems]
    if failed:
        print(f"\nFAILED: {', '.join(m.case.key for m in failed)} had answers that were not 2xx/OK", file=sys.stderr)
        return 1
    return 0


def describe_run(args: argparse.Namespace, started: datetime, user: User) -> str:
    """The table's first lines: when, what mesh, what load, what data, which user."""
    volume = Volume(args.users)
    where = "attached to the running mesh" if args.attach else "own mesh"
    return (
        f"make bench, {started:%Y-%m-%d %H:%M} UTC, {where}; h2load -c {args.clients} -m 1, {args.seconds} s "
        f"measured after a {args.warmup} s warm-up run (discarded), on the same {os.cpu_count()} cores\n"
        f"data: {volume.users:,} users, {volume.connections:,} connections, {volume.recipients:,} recipients, "
        f"{volume.capsules:,} capsules; measured user {user.username} (inbox {user.inbox}, "
        f"{user.connections} connections)"
    )


def start_baselines(mesh: BenchMesh, only: list[str]) -> dict[str, tuple[str, int]]:
    """The baseline servers the selected cases need: key → (address, pid)."""
    started: dict[str, tuple[str, int]] = {}
    modules = {"grpc-echo": "bench.echo_server", "http-echo": "bench.http_echo"}
    for key, module in modules.items():
        if key not in only:
            continue
        address = f"127.0.0.1:{free_port()}"
        process = mesh.spawn(f"bench-{key}", [sys.executable, "-m", module, address], _ready_probe(key, address))
        assert process.pid is not None
        started[key] = (address, process.pid)
    return started


def _ready_probe(key: str, address: str) -> Callable[[], bool]:
    """HTTP baseline: answers GET /; gRPC baseline: accepts connections (it prints READY after listening)."""
    if key == "http-echo":
        return lambda: http_ok(f"http://{address}/")
    host, port = address.rsplit(":", 1)
    return lambda: port_open(host, int(port))


def measure(
    case: Case, mesh: BenchMesh, pids: dict[str, int], redis: int | None, args: argparse.Namespace, out_dir: Path
) -> Measured:
    check = case.check()
    log(f"{case.key}: check {check}")
    options = case.load_options()
    if args.warmup > 0:
        h2load.run(case.title, case.url, clients=args.clients, seconds=args.warmup, warmup=0, **options)  # type: ignore[arg-type]
    admins = mesh.admin_addresses(case.ok_counter[0]) if case.ok_counter else []
    ok_before = grpc_ok_count(admins, case.ok_counter[1]) if case.ok_counter else 0
    instances = mesh.admin_addresses()
    reads_before = ReadCounts.take(instances) if instances else None
    groups = {POSTGRES: mesh.postgres_backends} | ({STANDBY: mesh.standby_backends} if mesh.standbys else {})
    meter = CpuMeter(pids | ({REDIS: redis} if redis else {}), groups)
    machine = MachineMeter()
    result = h2load.run(
        case.title,
        case.url,
        clients=args.clients,
        seconds=args.seconds,
        warmup=0,
        keep_output=out_dir / f"{case.key}.h2load.txt",
        **options,  # type: ignore[arg-type]
    )
    busy = machine.busy_pct()
    reads = ReadCounts.take(instances) - reads_before if reads_before is not None else None
    measured = Measured(case, check, result, meter.per_request_us(result.done), machine_busy_pct=busy, reads=reads)
    if result.not_2xx:
        measured.problems.append(
            f"{result.status_other} non-2xx answers and {result.errored} requests without answer of {result.done}"
        )
    if case.ok_counter:
        measured.grpc_ok = grpc_ok_count(admins, case.ok_counter[1]) - ok_before
        if not admins:
            measured.problems.append("no instance metrics found: gRPC status not verified")
        elif measured.grpc_ok < result.status_2xx:
            measured.problems.append(f"h2load saw {result.status_2xx} 2xx, the services counted {measured.grpc_ok} OK")
    r = result
    log(
        f"{case.key}: {r.requests_per_second:.0f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
        f"non-2xx {r.not_2xx}"
    )
    return measured


if __name__ == "__main__":
    sys.exit(main())
