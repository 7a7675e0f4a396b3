"""What the rate limiter costs per request: GET /v1/me through a gateway without the limiter,
with it asking Redis once per request (leasing off), and with it leasing cells of the user's
bucket (the default), in the same run, against the same mesh.

    python -m bench.ratelimit [--seconds 8] [--clients 32] [--rounds 2]

Starts the mesh on free ports, signs one user up, starts three more gateways that differ only in
GATEWAY_RATELIMIT_ENABLED=0 / GATEWAY_RATELIMIT_LEASE_MAX=1 / the default lease, the two limited
ones with a per-user limit (100000000/60) too high to refuse anything, as the perf benchmark
does; then runs h2load against each in turn, alternating for `--rounds` rounds so that drift of
the shared machine hits all alike. Reports req/s, p50/p99, the CPU per request of the gateway and
of Redis (the limiter's script runs there), and the limiter's Redis calls per request (from the
gateway's gateway_ratelimit_redis_calls_total). Every answer must be a 200: a 429 or any failure
aborts the bench, and so does a decision of the per-instance fallback.
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


# The limited gateways wait up to 1 s for Redis (not 100 ms): on the shared machine a stall of
# Redis would otherwise switch a gateway to its local fallback and abort the bench.
LIMITED = {"GATEWAY_RATELIMIT_USER": "100000000/60", "GATEWAY_RATELIMIT_REDIS_TIMEOUT_MS": "1000"}
GATEWAYS: dict[str, dict[str, str]] = {
    "limiter off": {"GATEWAY_RATELIMIT_ENABLED": "0"},
    "per request": {**LIMITED, "GATEWAY_RATELIMIT_LEASE_MAX": "1"},
    "leased": LIMITED,
}


def metrics(url: str) -> str:
    return str(urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode())


def redis_calls(url: str) -> float:
    """The limiter's Redis round trips so far (0 when it is off)."""
    for line in metrics(url).splitlines():
        if line.startswith("gateway_ratelimit_redis_calls_total "):
            return float(line.split()[1])
    return 0.0


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
    rows: dict[str, list[tuple[h2load.Result, dict[str, float]]]] = {name: [] for name in GATEWAYS}
    with Stack(settings) as stack:
        token = sign_up(stack.gateway_url)
        headers = {"authorization": f"Bearer {token}"}
        gateways = {
            name: spawn_gateway(stack, f"bench-{name.replace(' ', '-')}", **env) for name, env in GATEWAYS.items()
        }
        redis = redis_pid(stack.redis_url)
        for _ in range(args.rounds):
            for name, (url, process) in gateways.items():
                h2load.run(
                    name,
                    f"{url}/v1/me",
                    clients=args.clients,
                    seconds=args.warmup,
                    warmup=0,
                    headers=headers,
                    http1=True,
                )
                calls = redis_calls(url)
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
                cpu = meter.per_request_us(result.succeeded)
                cpu["redis calls"] = (redis_calls(url) - calls) / max(1, result.succeeded)
                rows[name].append((result, cpu))
        for name, (url, _) in gateways.items():
            if name != "limiter off" and "gateway_ratelimit_fallback_total 0.0" not in metrics(url):
                raise SystemExit(f"{name}: the limiter fell back to local decisions: figures are not Redis's")
    _report(rows, args)


def _report(rows: dict[str, list[tuple[h2load.Result, dict[str, float]]]], args: argparse.Namespace) -> None:
    print(f"\nGET /v1/me through a gateway, {args.clients} clients, {args.rounds} x {args.seconds} s each, alternating")
    print(f"{'gateway':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   {'Redis calls/req':>15}   CPU µs per request")
    summary: dict[str, tuple[float, float, float, float, float]] = {}
    for name, runs in rows.items():
        for result, cpu in runs:
            spent = "  ".join(f"{process} {us:.0f}" for process, us in cpu.items() if process != "redis calls")
            print(
                f"{name:<12} {result.requests_per_second:>8.0f} {result.p50_ms:>8.2f} {result.p99_ms:>8.2f}"
                f"   {cpu['redis calls']:>15.3f}   {spent}"
            )
        n = len(runs)
        summary[name] = (
            sum(r.requests_per_second for r, _ in runs) / n,
            sum(r.p50_ms for r, _ in runs) / n,
            sum(c.get("gateway", 0.0) for _, c in runs) / n,
            sum(c.get("redis", 0.0) for _, c in runs) / n,
            sum(c["redis calls"] for _, c in runs) / n,
        )
    off = summary["limiter off"]
    print("\nlimiter cost against no limiter (means over the rounds):")
    for name in ("per request", "leased"):
        on = summary[name]
        print(
            f"  {name:<12} throughput {on[0] / off[0] - 1:+.1%}, p50 {on[1] - off[1]:+.2f} ms, "
            f"gateway CPU {on[2] - off[2]:+.0f} µs/request, Redis CPU {on[3] - off[3]:+.0f} µs/request, "
            f"{on[4]:.3f} Redis calls/request"
        )


if __name__ == "__main__":
    main()
