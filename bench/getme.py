"""GetMe throughput and latency, every path measured in the same run (SPEC §11).

    python -m bench.getme [--seconds 10] [--clients 32] [--instances 1]

Starts the whole mesh on free ports (its own databases, dropped at the end), seeds 10,000 users,
signs one up, then drives with h2load, one scenario after the other:
  echo        a bare grpc.aio service answering GetMe with a canned user (the baseline)
  grpc        GetMe over gRPC straight to one auth instance
  envoy       GetMe over gRPC through Envoy
  http        GET /v1/me over HTTP/1.1 through gateway → Envoy → auth
Every answer is checked: h2load's 2xx count must match the OK count in the service's metrics
(gRPC errors travel in trailers with HTTP 200, which h2load alone would count as successes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.request
import uuid
from pathlib import Path

import asyncpg

from bench import h2load
from bench.cpu import CpuMeter, pid_of
from bench.mesh import grpc_ok_count
from bench.seed import asyncpg_dsn, seed_users
from launcher import infra as infra_mod
from launcher.keys import ensure_dev_keys
from launcher.process import free_port
from launcher.stack import Stack, StackSettings

REPO = Path(__file__).resolve().parent.parent
GETME = "/capsule.auth.v1.AuthService/GetMe"


def ok_getme_count(admin_addresses: list[str]) -> int:
    return grpc_ok_count(admin_addresses, "GetMe")


def sign_up(gateway_url: str) -> str:
    name = "bench" + uuid.uuid4().hex[:8]
    body = json.dumps({"email": f"{name}@example.com", "username": name, "password": "bench password 1"})
    request = urllib.request.Request(
        f"{gateway_url}/v1/auth:signup", data=body.encode(), headers={"content-type": "application/json"}
    )
    return str(json.load(urllib.request.urlopen(request, timeout=10))["accessToken"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--instances", type=int, default=1, help="auth instances behind Envoy")
    args = parser.parse_args()
    h2load.ensure_h2load()

    infra = infra_mod.ensure(install=True)
    keys = ensure_dev_keys()
    settings = StackSettings.for_tests(
        infra, keys, work_dir=REPO / ".run" / "bench", instances={"auth": args.instances}, log_level="WARNING"
    )
    results: list[h2load.Result] = []
    cpu: dict[str, dict[str, float]] = {}
    with Stack(settings) as stack:
        asyncio.run(_seed(stack.database_urls["auth"]))
        token = sign_up(stack.gateway_url)
        auth = {"authorization": f"Bearer {token}"}
        admins = [inst.admin_address for inst in stack.instances["auth"]]

        echo_address = f"127.0.0.1:{free_port()}"
        echo = stack.spawn(
            "bench-echo",
            [sys.executable, "-m", "bench.echo_server", echo_address],
            ready=_tcp_ready(echo_address),
        )
        common = {"clients": args.clients, "seconds": args.seconds, "warmup": 0}
        scenarios = [
            ("echo (baseline)", f"http://{echo_address}{GETME}", {"grpc_body": b""}, False),
            (
                "GetMe gRPC → auth",
                f"http://{stack.instances['auth'][0].grpc_address}{GETME}",
                {"grpc_body": b"", "headers": auth},
                True,
            ),
            (
                "GetMe gRPC → Envoy → auth",
                f"http://{stack.envoy_grpc}{GETME}",
                {"grpc_body": b"", "headers": auth},
                True,
            ),
            (
                "GET /v1/me HTTP → gateway → Envoy → auth",
                f"{stack.gateway_url}/v1/me",
                {"headers": auth, "http1": True},
                True,
            ),
        ]
        pids = {"gateway": pid_of(stack.gateway), "envoy": pid_of(stack.envoy), "echo": pid_of(echo)}
        pids.update({inst.name: pid_of(inst.process) for inst in stack.instances["auth"]})
        for name, url, options, counted in scenarios:
            # Warm up in a run of its own, so that the CPU measured below is the measured requests'.
            h2load.run(name, url, clients=args.clients, seconds=args.warmup, warmup=0, **options)  # type: ignore[arg-type]
            before = ok_getme_count(admins) if counted else 0
            meter = CpuMeter(pids)
            result = h2load.run(name, url, **common, **options)  # type: ignore[arg-type]
            cpu[name] = meter.per_request_us(result.succeeded)
            if counted:
                answered_ok = ok_getme_count(admins) - before
                if answered_ok < result.succeeded:
                    raise SystemExit(f"{name}: h2load saw {result.succeeded} successes, the service {answered_ok} OK")
            results.append(result)
    _report(results, cpu, args)


def _tcp_ready(address: str):  # type: ignore[no-untyped-def]
    from launcher.process import port_open

    host, _, port = address.rpartition(":")
    return lambda: port_open(host, int(port))


async def _seed(database_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await seed_users(conn, 10_000)
    finally:
        await conn.close()


def _report(results: list[h2load.Result], cpu: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    baseline = results[0].requests_per_second
    direct = results[1].requests_per_second
    print()
    print(
        f"GetMe, {args.clients} clients, {args.seconds} s each after {args.warmup} s warm-up, "
        f"{args.instances} auth instance(s), 10,000 seeded users; load from h2load on the same 2 cores"
    )
    print(f"{'path':<44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7} {'vs echo':>8} {'vs gRPC':>8}")
    for r in results:
        print(
            f"{r.name:<44} {r.requests_per_second:>8.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.failed:>7d} "
            f"{r.requests_per_second / baseline:>8.2f} {r.requests_per_second / direct:>8.2f}"
        )
    print("\nCPU per request (µs, server processes only; h2load uses the rest):")
    for r in results:
        spent = {name: us for name, us in cpu.get(r.name, {}).items() if us >= 5}
        print(f"  {r.name:<42} " + "  ".join(f"{name} {us:.0f}" for name, us in spent.items()))
    http = results[-1]
    print(f"\nHTTP through the gateway / gRPC straight to the service: {http.requests_per_second / direct:.2f}")
    print(f"cached GetMe gRPC / bare echo: {direct / baseline:.2f} (SPEC §11 target ≥ 0.50)")
    print(
        f"HTTP GetMe: {http.requests_per_second:.0f}/s, p99 {http.p99_ms:.1f} ms "
        "(SPEC §11 target ≥ 1,500/s, p99 < 100 ms)"
    )


if __name__ == "__main__":
    main()
