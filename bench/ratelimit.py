"""What the rate limiter costs per request: GET /v1/me through a gateway with the limiter and
through one without it, in the same run, against the same mesh.

    python -m bench.ratelimit [--seconds 8] [--clients 32] [--rounds 2]

Starts the mesh on free ports, signs one user up, starts two more gateways that differ only in
GATEWAY_RATELIMIT_ENABLED (1 with a per-user limit too high to refuse anything, 0), then runs h2load
against each in turn, alternating for `--rounds` rounds so that drift of the shared machine hits
both alike. Reports req/s, p50/p99 and the CPU per request of the gateway and of Redis (the
limiter's script runs there). Every answer must be a 200: a 429 or any failure aborts the bench.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

from bench import h2load
from bench.cpu import CpuMeter, redis_pid
from bench.getme import sign_up
from launcher import infra as infra_mod
from launcher.keys import ensure_dev_keys
from launcher.process import ManagedProcess, free_port, http_ok
from launcher.stack import Stack, StackSettings

REPO = Path(__file__).resolve().parent.parent


def spawn_gateway(stack: Stack, name: str, **env: str) -> tuple[str, ManagedProcess]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = stack.spawn(
        name,
        [sys.executable, "-m", "gateway"],
        env={**stack.gateway_env(), "GATEWAY_LISTEN": f"127.0.0.1:{port}", **env},
        ready=lambda: http_ok(f"{url}/readyz"),
    )
    return url, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    h2load.ensure_h2load()

    infra = infra_mod.ensure(install=True)
    settings = StackSettings.for_tests(
        infra, ensure_dev_keys(), work_dir=REPO / ".run" / "bench-ratelimit", instances={"auth": 1}, log_level="WARNING"
    )
    rows: dict[str, list[tuple[h2load.Result, dict[str, float]]]] = {"limiter on": [], "limiter off": []}
    with Stack(settings) as stack:
        token = sign_up(stack.gateway_url)
        headers = {"authorization": f"Bearer {token}"}
        on_url, on = spawn_gateway(stack, "bench-limiter-on", GATEWAY_RATELIMIT_USER="1000000000/60")
        off_url, off = spawn_gateway(stack, "bench-limiter-off", GATEWAY_RATELIMIT_ENABLED="0")
        redis = redis_pid(stack.redis_url)
        for _ in range(args.rounds):
            for name, url, process in (("limiter on", on_url, on), ("limiter off", off_url, off)):
                h2load.run(
                    name,
                    f"{url}/v1/me",
                    clients=args.clients,
                    seconds=args.warmup,
                    warmup=0,
                    headers=headers,
                    http1=True,
                )
                pids = {"gateway": process.pid or 0, **({"redis": redis} if redis else {})}
                meter = CpuMeter(pids)
                result = h2load.run(
                    name,
                    f"{url}/v1/me",
                    clients=args.clients,
                    seconds=args.seconds,
                    warmup=0,
                    headers=headers,
                    http1=True,
                )
                if result.failed:
                    raise SystemExit(f"{name}: {result.failed} requests failed (or were refused)")
                rows[name].append((result, meter.per_request_us(result.succeeded)))
        on_metrics = urllib.request.urlopen(f"{on_url}/metrics", timeout=5).read().decode()
        if "gateway_ratelimit_fallback_total 0.0" not in on_metrics:
            raise SystemExit("the limiter fell back to local decisions during the bench: figures are not Redis's")
    _report(rows, args)


def _report(rows: dict[str, list[tuple[h2load.Result, dict[str, float]]]], args: argparse.Namespace) -> None:
    print(f"\nGET /v1/me through a gateway, {args.clients} clients, {args.rounds} x {args.seconds} s each, alternating")
    print(f"{'gateway':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   CPU µs per request")
    summary: dict[str, tuple[float, float, float, float]] = {}
    for name, runs in rows.items():
        for result, cpu in runs:
            spent = "  ".join(f"{process} {us:.0f}" for process, us in cpu.items())
            print(
                f"{name:<14} {result.requests_per_second:>8.0f} {result.p50_ms:>8.2f} {result.p99_ms:>8.2f}   {spent}"
            )
        n = len(runs)
        summary[name] = (
            sum(r.requests_per_second for r, _ in runs) / n,
            sum(r.p50_ms for r, _ in runs) / n,
            sum(c.get("gateway", 0.0) for _, c in runs) / n,
            sum(c.get("redis", 0.0) for _, c in runs) / n,
        )
    on, off = summary["limiter on"], summary["limiter off"]
    print(
        f"\nlimiter cost: throughput {on[0] / off[0] - 1:+.1%}, p50 {on[1] - off[1]:+.2f} ms, "
        f"gateway CPU {on[2] - off[2]:+.0f} µs/request, Redis CPU {on[3] - off[3]:+.0f} µs/request"
    )


if __name__ == "__main__":
    main()
