"""`make bench`'s table and results file.

One table, one column per case: throughput, latency, answers, ratios to the baselines, how busy
the machine was, then the CPU each process spent per request (µs, from /proc) with per-service
sums. results.json keeps every figure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cases import Case, User
from bench.h2load import Result
from bench.mesh import MeshProcess
from bench.replicas import PRIMARY, ReadCounts

POSTGRES, STANDBY, REDIS = "postgres", "postgres-standby", "redis"


@dataclass
class Measured:
    """One case's measured run."""

    case: Case
    check: str
    result: Result
    # Process (or group) name → CPU µs per answered request.
    cpu_us: dict[str, float]
    # OK answers the services counted over the run (gRPC cases with a counter).
    grpc_ok: int | None = None
    problems: list[str] = field(default_factory=list)
    machine_busy_pct: float = 0.0
    # Database reads (by target) and replica fallbacks (by reason) of every service instance over
    # the measured run; None when the instances' metrics could not be read.
    reads: ReadCounts | None = None

    def reads_per_request(self, target: str) -> float | None:
        """Database reads per answered request on the primary or on the replicas together."""
        if self.reads is None or self.case.baseline or not self.result.done:
            return None
        count = self.reads.primary if target == PRIMARY else self.reads.replica
        return count / self.result.done


def mesh_cpu_us(measured: Measured, processes: Sequence[MeshProcess]) -> float:
    """CPU per request of the serving processes: the whole mesh, or the baseline's own server."""
    if measured.case.baseline:
        return measured.cpu_us.get(measured.case.key, 0.0)
    return sum(measured.cpu_us.get(p.name, 0.0) for p in processes)


class Table:
    """One column per case, one row per figure: a label, then a cell per case."""

    def __init__(self, rows: Sequence[Measured]) -> None:
        self.rows = rows
        self.width = max(10, *(len(m.case.key) + 2 for m in rows))
        self.lines = [f"{'':<24}" + "".join(f"{m.case.key:>{self.width}}" for m in rows)]

    def add(self, label: str, cells: Sequence[str]) -> None:
        self.lines.append((f"{label:<24}" + "".join(f"{cell:>{self.width}}" for cell in cells)).rstrip())

    def figures(self, label: str, values: Sequence[float | None], digits: int = 0) -> None:
        self.add(label, ["-" if v is None else f"{v:.{digits}f}" for v in values])


def table(rows: Sequence[Measured], processes: Sequence[MeshProcess]) -> list[str]:
    """The run as one table: what each case answered, then the CPU each process spent on it."""
    base = {m.case.key: m.result.requests_per_second for m in rows if m.case.baseline}
    t = Table(rows)
    t.figures("req/s", [m.result.requests_per_second for m in rows])
    t.figures("p50 ms", [m.result.p50_ms for m in rows], 1)
    t.figures("p99 ms", [m.result.p99_ms for m in rows], 1)
    t.figures("non-2xx", [m.result.not_2xx for m in rows])
    t.figures("body B", [m.result.body_bytes for m in rows])
    http_base, grpc_base = base.get("http-echo"), base.get("grpc-echo")
    t.figures("vs HTTP baseline", [_ratio(m, http_base) if not m.case.grpc else None for m in rows], 2)
    t.figures("vs gRPC baseline", [_ratio(m, grpc_base) for m in rows], 2)
    t.figures("machine busy %", [m.machine_busy_pct for m in rows])
    db_reads(t, rows)
    t.add("CPU µs per request:", [""] * len(rows))
    services: dict[str, list[str]] = {}
    for p in processes:
        if p.service:
            services.setdefault(p.service, []).append(p.name)
    for p in processes:
        if p.service is None:
            t.figures(f"  {p.name}", [m.cpu_us.get(p.name) for m in rows])
    for service, names in services.items():
        for name in names:
            t.figures(f"    {name}", [m.cpu_us.get(name) for m in rows])
        t.figures(f"  {service} Σ", [sum(m.cpu_us.get(n, 0.0) for n in names) for m in rows])
    t.figures("  mesh Σ", [None if m.case.baseline else mesh_cpu_us(m, processes) for m in rows])
    for key in ("grpc-echo", "http-echo"):
        if any(key in m.cpu_us for m in rows):
            t.figures(f"  {key} server", [m.cpu_us.get(key) for m in rows])
    t.figures("  Postgres backends", [m.cpu_us.get(POSTGRES) for m in rows])
    if any(STANDBY in m.cpu_us for m in rows):
        t.figures("  standby backends", [m.cpu_us.get(STANDBY) for m in rows])
    t.figures("  Redis server", [m.cpu_us.get(REDIS) for m in rows])
    return t.lines


NO_READS = "no DB reads"


def db_reads(t: Table, rows: Sequence[Measured]) -> None:
    """Where the measured run's database reads ran: how many in all, per request on the primary
    and on the replicas, and the replicas' share; "no DB reads" rather than a share of nothing."""
    counted = [m.reads if m.reads is not None and not m.case.baseline else None for m in rows]
    t.figures("DB reads in run", [None if c is None else c.total for c in counted])
    t.figures("DB reads/req primary", [m.reads_per_request(PRIMARY) for m in rows], 3)
    t.figures("DB reads/req replica", [m.reads_per_request("replica") for m in rows], 3)
    shares = [None if c is None else c.replica_share_pct() for c in counted]
    t.add(
        "replica share of reads %",
        ["-" if c is None else NO_READS if s is None else f"{s:.0f}" for c, s in zip(counted, shares, strict=True)],
    )


def _ratio(measured: Measured, baseline: float | None) -> float | None:
    return measured.result.requests_per_second / baseline if baseline else None


LEGEND = """\
req/s, p50/p99: h2load's measured run (after a discarded warm-up run; latencies from its per-request log).
non-2xx: answers other than 2xx + requests with no answer (+ gRPC 2xx the services did not count OK).
body B: response body bytes per answer (gRPC: the framed message).
vs HTTP/gRPC baseline: req/s over the baseline's (bare uvicorn JSON echo; bare grpc.aio echo).
machine busy %: the whole machine's CPU during the run (all cores: h2load, Postgres, everyone else).
DB reads: db_reads_total of every service instance over the measured run, background jobs included
  (every database read, counted where it ran: the primary or a streaming standby); per answered
  request on each, and the standby's share. me and inbox are mostly answered from copies kept in
  process: few reads or none ("no DB reads"), whose share says little. results.json has the reads
  per target and db_replica_fallbacks_total by reason (reads that could have gone to the standby).
CPU µs per request: each process's CPU (all threads, /proc) per answered request; mesh Σ = gateway,
  Envoy, control plane and every service instance. Postgres: the backends connected to the mesh's
  databases (standby: those on the streaming standby, when the instances read from one); Redis:
  the whole server (shared: everyone's use counts)."""


def render(rows: Sequence[Measured], processes: Sequence[MeshProcess], header: str) -> str:
    lines = [header, ""]
    lines += [f"  {m.case.key:<12} {m.case.title}   [{m.check}]" for m in rows]
    lines.append("")
    lines += table(rows, processes)
    lines += ["", LEGEND]
    problems = [f"  {m.case.key}: {p}" for m in rows for p in m.problems]
    if problems:
        lines += ["", "FAILED CHECKS:", *problems]
    return "\n".join(lines)


def write_results(
    out_dir: Path,
    rows: Sequence[Measured],
    processes: Sequence[MeshProcess],
    user: User,
    settings: dict[str, Any],
    table: str,
) -> Path:
    """results.json (every figure) and summary.txt (the table) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "settings": settings,
        "machine": {"cpus": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3]},
        "user": asdict(user),
        "processes": [asdict(p) for p in processes],
        "cases": [
            {
                "key": m.case.key,
                "title": m.case.title,
                "url": m.case.url,
                "check": m.check,
                "result": asdict(m.result),
                "cpu_us_per_request": m.cpu_us,
                "mesh_cpu_us_per_request": mesh_cpu_us(m, processes),
                "grpc_ok": m.grpc_ok,
                "machine_busy_pct": m.machine_busy_pct,
                "problems": m.problems,
                "db_reads": _reads_json(m),
            }
            for m in rows
        ],
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "summary.txt").write_text(table + "\n")
    return path


def _reads_json(measured: Measured) -> dict[str, Any] | None:
    reads = measured.reads
    if reads is None:
        return None
    return {
        "by_target": dict(reads.reads),
        "primary_per_request": measured.reads_per_request(PRIMARY),
        "replica_per_request": measured.reads_per_request("replica"),
        "replica_share_pct": reads.replica_share_pct(),
        "replica_fallbacks_by_reason": dict(reads.fallbacks),
    }
