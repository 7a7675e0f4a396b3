"""Throughput of one auth instance vs two behind Envoy, measured in the same run.

    python -m bench.instances [--seconds 10] [--clients 32]

Starts the mesh (control plane, Envoy, 2 auth instances, gateway; its own databases, dropped at
the end), signs a user up, then drives GetMe over gRPC through Envoy with h2load:
  1 instance   after a graceful stop (SIGTERM → deregistered) of the second instance
  2 instances  after the second is started again and Envoy routes to it
Every answer is checked against the instances' OK counters (gRPC errors travel in trailers with
HTTP 200, which h2load alone would count as successes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import h2load
from bench.cpu import CpuMeter, pid_of
from bench.getme import GETME, ok_getme_count, sign_up
from launcher import infra as infra_mod
from launcher.keys import ensure_dev_keys
from launcher.stack import Stack, StackSettings
from mesh.topology import AUTH

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    h2load.ensure_h2load()

    infra = infra_mod.ensure(install=True)
    settings = StackSettings.for_tests(
        infra,
        ensure_dev_keys(),
        work_dir=REPO / ".run" / "bench-instances",
        services=(AUTH,),
        instances={"auth": 2},
        log_level="WARNING",
        gateway_env={"GATEWAY_RATELIMIT_ENABLED": "0"},
    )
    rows: list[tuple[h2load.Result, dict[str, float]]] = []
    with Stack(settings) as stack:
        token = sign_up(stack.gateway_url)
        options: dict[str, object] = {"grpc_body": b"", "headers": {"authorization": f"Bearer {token}"}}
        url = f"http://{stack.envoy_grpc}{GETME}"
        first, second = stack.instances["auth"]
        stack.stop_instance(second)
        stack.wait_envoy_health("auth", healthy=[first.grpc_address], unhealthy=[second.grpc_address])
        rows.append(measure(stack, "1 instance behind Envoy", url, options, args))
        stack.start_instance("auth", second.index)
        stack.wait_envoy_health("auth", healthy=[first.grpc_address, second.grpc_address])
        rows.append(measure(stack, "2 instances behind Envoy", url, options, args))
    print()
    print(f"GetMe over gRPC through Envoy, h2load -c {args.clients} -m 1, {args.seconds} s, {args.warmup} s warm-up")
    print(f"{'scenario':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}   CPU µs per call")
    for result, cpu in rows:
        cpu_text = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
        print(
            f"{result.name:<28}{result.requests_per_second:>10.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
            f"{result.failed:>8}   {cpu_text}"
        )
    one, two = rows[0][0].requests_per_second, rows[1][0].requests_per_second
    print(f"scaling 1 → 2 instances: {two / one:.2f}x")


def measure(
    stack: Stack, name: str, url: str, options: dict[str, object], args: argparse.Namespace
) -> tuple[h2load.Result, dict[str, float]]:
    running = [inst for inst in stack.instances["auth"] if inst.running]
    admins = [inst.admin_address for inst in running]
    h2load.run(name, url, clients=args.clients, seconds=args.warmup, warmup=0, **options)  # type: ignore[arg-type]
    pids = {"envoy": pid_of(stack.envoy)} | {inst.name: pid_of(inst.process) for inst in running}
    before = ok_getme_count(admins)
    meter = CpuMeter(pids)
    result = h2load.run(name, url, clients=args.clients, seconds=args.seconds, warmup=0, **options)  # type: ignore[arg-type]
    cpu = meter.per_request_us(result.succeeded)
    answered_ok = ok_getme_count(admins) - before
    if answered_ok < result.succeeded:
        raise SystemExit(f"{name}: h2load saw {result.succeeded} successes, the services {answered_ok} OK")
    return result, cpu


if __name__ == "__main__":
    main()
