"""Held connections: what N idle keep-alive connections cost one gateway process (issue 15).

    python -m bench.held_connections [--connections 10000] [--seconds 10] [--clients 16]

1M concurrent users hold about as many open client connections across the gateways. This starts
a test stack (auth only, rate limits raised out of the way as in bench/mesh.py), signs one user
up, and on its one gateway process:
  1. drives GET /v1/me with that user's token through h2load (HTTP/1.1, --clients connections)
     for --seconds: the load alone;
  2. opens --connections connections from this one asyncio process, each a real HTTP/1.1
     connection the gateway has parsed (GET /readyz, answered, kept alive), and waits until the
     gateway's gateway_http_connections gauge counts every one of them;
  3. drives the same load for --seconds again while they are held, then checks that every held
     connection is still open (gauge) and a sample of them still answers;
  4. closes them and drives the load alone once more (alone, held, alone: a drift of the machine
     over the run shows as a difference between the two runs alone).
Memory per connection = the gateway's VmRSS (/proc/<pid>/status) after step 2 minus before it,
over N. The held connections stay idle: the gateway's keep-alive timeout is raised for the run
(GATEWAY_KEEPALIVE_TIMEOUT_SECONDS, see hold_env) rather than kept alive by periodic requests,
so the load measured is the steady load only, and its cap is raised above N plus the load's.
The open-file limit of this process is raised to its hard limit before the stack starts; the
gateway (a child, launcher/process.py) inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench import h2load
from bench.getme import sign_up
from bench.mesh import BENCH_RATE_LIMITS
from launcher import infra as infra_mod
from launcher.keys import ensure_dev_keys
from launcher.stack import Stack, StackSettings
from mesh.topology import SERVICES

REPO = Path(__file__).resolve().parent.parent
# Connections the cap leaves beyond the held ones: the load's, the metrics client's, a few spare.
CAP_HEADROOM = 256
# Longer than any run: an idle held connection must not be closed for idleness mid-measurement.
HOLD_KEEPALIVE_SECONDS = 3600
# Connections opened at once (well under uvicorn's listen backlog of 2048).
OPEN_BATCH = 500
# How long the gauge may take to count connections opened or closed (generous for a loaded machine).
CONNECTIONS_WAIT = 60.0
READYZ = b"GET /readyz HTTP/1.1\r\nHost: gateway\r\n\r\n"


@dataclass(frozen=True)
class HeldReport:
    connections: int
    rss_before_kib: int
    rss_held_kib: int
    rss_after_load_kib: int
    rss_closed_kib: int
    open_seconds: float
    alone: h2load.Result
    held: h2load.Result
    alone_again: h2load.Result

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_held_kib - self.rss_before_kib) / self.connections


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_file_limit(pid: int) -> int:
    """The soft open-file limit of another process (from /proc/<pid>/limits)."""
    text = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)", text, re.MULTILINE)
    assert match, text
    return int(match.group(1))


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    assert match, text
    return int(match.group(1))


def hold_env(connections: int) -> dict[str, str]:
    """Gateway settings for holding `connections` idle ones: cap above them, idle timeout out of the way."""
    return {
        "GATEWAY_MAX_CONNECTIONS": str(connections + CAP_HEADROOM),
        "GATEWAY_KEEPALIVE_TIMEOUT_SECONDS": str(HOLD_KEEPALIVE_SECONDS),
    }


async def metric(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def until_connections(http: httpx.AsyncClient, count: int) -> None:
    """Polls gateway_http_connections (over `http`'s one kept-alive connection) until it says
    `count`; fails if it does not within CONNECTIONS_WAIT seconds."""
    deadline = time.monotonic() + CONNECTIONS_WAIT
    while (current := await metric(http, "gateway_http_connections")) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway_http_connections stays {current:g}, not {count}")


def metrics_client(url: str) -> httpx.AsyncClient:
    """One connection, kept alive across the whole run (it counts as one in the gauge)."""
    return httpx.AsyncClient(
        base_url=url, timeout=30.0, limits=httpx.Limits(max_connections=1, keepalive_expiry=HOLD_KEEPALIVE_SECONDS)
    )


class HeldConnections:
    """Idle HTTP/1.1 connections to one gateway, each answered once (GET /readyz) and kept alive."""

    def __init__(self, url: str) -> None:
        address = urlsplit(url)
        assert address.hostname and address.port
        self.host, self.port = address.hostname, address.port
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, count: int, batch: int = OPEN_BATCH) -> None:
        while len(self.streams) < count:
            size = min(batch, count - len(self.streams))
            self.streams += await asyncio.gather(*(self._open_one() for _ in range(size)))

    async def _open_one(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            await ask(reader, writer, READYZ)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def ask_sample(self, count: int) -> list[int]:
        """GET /readyz on `count` held connections spread over all of them; their statuses."""
        step = max(1, len(self.streams) // count)
        return [await ask(*self.streams[i], READYZ) for i in range(0, len(self.streams), step)][:count]

    def close(self) -> None:
        for _, writer in self.streams:
            writer.close()
        self.streams = []


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request, read its whole answer (content-length framed); the status. Fails if the
    gateway means to close the connection."""
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
    status = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    assert status and length, head[:300]
    assert b"connection: close" not in head.lower(), head[:300]
    await reader.readexactly(int(length.group(1)))
    return int(status.group(1))


async def measure(
    gateway_url: str, pid: int, token: str, *, connections: int, seconds: int, clients: int, warmup: int = 2
) -> HeldReport:
    """The whole measurement against one gateway process (`pid`) started with hold_env(connections)."""
    url = f"{gateway_url}/v1/me"
    load = {"clients": clients, "seconds": seconds, "warmup": 0, "headers": {"authorization": f"Bearer {token}"}}

    def run(name: str, **overrides: object) -> h2load.Result:
        return h2load.run(name, url, http1=True, **{**load, **overrides})  # type: ignore[arg-type]

    held = HeldConnections(gateway_url)
    async with metrics_client(gateway_url) as http:
        try:
            assert await metric(http, "gateway_http_connections_max") >= connections + clients + 1
            await asyncio.to_thread(run, "warm-up", seconds=warmup)
            alone = await asyncio.to_thread(run, "GET /v1/me alone")
            await until_connections(http, 1)  # h2load's are gone: only this client's
            rss_before = rss_kib(pid)
            started = time.monotonic()
            await held.open(connections)
            await until_connections(http, connections + 1)
            open_seconds = time.monotonic() - started
            rss_held = rss_kib(pid)
            with_held = await asyncio.to_thread(run, f"GET /v1/me, {connections} held")
            await until_connections(http, connections + 1)  # every held one is still open
            statuses = await held.ask_sample(100)
            assert statuses == [200] * len(statuses), statuses
            rss_after_load = rss_kib(pid)
        finally:
            held.close()
        await until_connections(http, 1)
        rss_closed = rss_kib(pid)
        alone_again = await asyncio.to_thread(run, "GET /v1/me alone, after")
    return HeldReport(
        connections, rss_before, rss_held, rss_after_load, rss_closed, open_seconds, alone, with_held, alone_again
    )


def report_lines(report: HeldReport) -> list[str]:
    lines = [
        f"held connections        {report.connections} (opened and counted in {report.open_seconds:.1f} s)",
        f"gateway VmRSS           {report.rss_before_kib} KiB before, {report.rss_held_kib} KiB held, "
        f"{report.rss_after_load_kib} KiB after the load, {report.rss_closed_kib} KiB once closed",
        f"memory per connection   {report.kib_per_connection:.1f} KiB",
        f"{'load':<38} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ok':>8} {'not 2xx':>8}",
    ]
    for result in (report.alone, report.held, report.alone_again):
        lines.append(
            f"{result.name:<38} {result.requests_per_second:>9.0f} {result.p50_ms:>8.2f} {result.p99_ms:>8.2f}"
            f" {result.status_2xx:>8} {result.not_2xx:>8}"
        )
    return lines


def stack_settings(connections: int, work_dir: Path, extra_env: Mapping[str, str] | None = None) -> StackSettings:
    infra = infra_mod.ensure(install=True)
    return StackSettings.for_tests(
        infra,
        ensure_dev_keys(),
        work_dir=work_dir,
        services=tuple(spec for spec in SERVICES if spec.name == "auth"),
        log_level="WARNING",
        gateway_env={**BENCH_RATE_LIMITS, **hold_env(connections), **(extra_env or {})},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16, help="h2load's connections (the steady load)")
    args = parser.parse_args()
    h2load.ensure_h2load()
    limit = raise_open_file_limit()
    # This process holds N sockets, the gateway N more (and its own files).
    if limit < args.connections + 1024:
        raise SystemExit(f"open-file limit {limit} is too low for {args.connections} connections (ulimit -Hn)")
    with Stack(stack_settings(args.connections, REPO / ".run" / "bench-held")) as stack:
        assert stack.gateway is not None and stack.gateway.pid is not None
        pid = stack.gateway.pid
        print(f"[bench] gateway pid {pid}, open-file limit {open_file_limit(pid)}", flush=True)
        token = sign_up(stack.gateway_url)
        report = asyncio.run(
            measure(
                stack.gateway_url, pid, token, connections=args.connections, seconds=args.seconds, clients=args.clients
            )
        )
    print("\n".join(report_lines(report)))


if __name__ == "__main__":
    main()
