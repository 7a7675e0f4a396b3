"""`make bench`'s table and results file.

Two tables: one row per case (throughput, latency, answers, ratios to the baselines), then the CPU
each process spent per request in each case (µs, from /proc), with per-service sums.
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

POSTGRES, REDIS = "postgres", "redis"


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


def mesh_cpu_us(measured: Measured, processes: Sequence[MeshProcess]) -> float:
    """CPU per request of the serving processes: the whole mesh, or the baseline's own server."""
    if measured.case.baseline:
        return measured.cpu_us.get(measured.case.key, 0.0)
    return sum(measured.cpu_us.get(p.name, 0.0) for p in processes)


def summary_table(rows: Sequence[Measured], processes: Sequence[MeshProcess]) -> list[str]:
    base = {m.case.key: m.result.requests_per_second for m in rows if m.case.baseline}
    lines = [
        f"{'case':<34} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} {'body B':>7} "
        f"{'/HTTP base':>10} {'/gRPC base':>10} {'CPU µs/req':>10} {'busy%':>5}"
    ]
    for m in rows:
        r = m.result
        http_ratio = _ratio(r.requests_per_second, base.get("http-echo")) if not m.case.grpc else "-"
        grpc_ratio = _ratio(r.requests_per_second, base.get("grpc-echo"))
        lines.append(
            f"{m.case.title:<34} {r.requests_per_second:>7.0f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {r.not_2xx:>7d} "
            f"{r.body_bytes:>7.0f} {http_ratio:>10} {grpc_ratio:>10} {mesh_cpu_us(m, processes):>10.0f} "
            f"{m.machine_busy_pct:>5.0f}"
        )
    return lines


def _ratio(value: float, baseline: float | None) -> str:
    return f"{value / baseline:.2f}" if baseline else "-"


def cpu_table(rows: Sequence[Measured], processes: Sequence[MeshProcess]) -> list[str]:
    """Rows: processes (and per-service sums); columns: cases."""
    keys = [m.case.key for m in rows]
    width = max(9, *(len(k) + 1 for k in keys))
    lines = [f"{'CPU µs per request':<22}" + "".join(f"{k:>{width}}" for k in keys)]

    def line(label: str, values: Sequence[float | None]) -> str:
        cells = "".join(f"{'-' if v is None else f'{v:.0f}':>{width}}" for v in values)
        return f"{label:<22}{cells}"

    services: dict[str, list[str]] = {}
    for p in processes:
        if p.service:
            services.setdefault(p.service, []).append(p.name)
    for p in processes:
        if p.service is None:
            lines.append(line(p.name, [m.cpu_us.get(p.name) for m in rows]))
    for service, names in services.items():
        for name in names:
            lines.append(line(f"  {name}", [m.cpu_us.get(name) for m in rows]))
        lines.append(line(f"{service} Σ", [sum(m.cpu_us.get(n, 0.0) for n in names) for m in rows]))
    lines.append(line("mesh Σ", [None if m.case.baseline else mesh_cpu_us(m, processes) for m in rows]))
    for key in ("grpc-echo", "http-echo"):
        if any(key in m.cpu_us for m in rows):
            lines.append(line(f"{key} server", [m.cpu_us.get(key) for m in rows]))
    lines.append(line("Postgres (backends)", [m.cpu_us.get(POSTGRES) for m in rows]))
    lines.append(line("Redis (server)", [m.cpu_us.get(REDIS) for m in rows]))
    return lines


LEGEND = """\
req/s, p50/p99: h2load's measured run (after a discarded warm-up run), per-request log.
non-2xx: answers other than 2xx + requests with no answer (+ gRPC 2xx the services did not count OK).
body B: response body bytes per answer (gRPC: the framed message).
/HTTP base, /gRPC base: req/s over the baseline's (bare uvicorn JSON echo; bare grpc.aio echo).
CPU µs/req: CPU of the serving processes per answered request: the whole mesh (gateway, Envoy,
  control plane, every service instance) or the baseline's own server. Postgres and Redis are shown
  apart (Postgres: backends connected to the mesh's databases; Redis: the whole server, shared).
busy%: the whole machine's CPU busy during the run (all cores: h2load, Postgres, everyone else)."""


def render(rows: Sequence[Measured], processes: Sequence[MeshProcess], header: str) -> str:
    lines = [header, ""]
    lines += summary_table(rows, processes)
    lines.append("")
    lines += cpu_table(rows, processes)
    lines.append("")
    lines.append(LEGEND)
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
            }
            for m in rows
        ],
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "summary.txt").write_text(table + "\n")
    return path
