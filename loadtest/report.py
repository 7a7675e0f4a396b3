"""Reading a headless run's CSV (`locust --csv PREFIX`): standard library only.

Unlike journeys.py this module never imports Locust (nor gevent): the launcher's `load` command
and tests/load read the run's results with it.

The CSV files are Locust's snapshot, rewritten every second during the run and not once more at
the end: their counts may miss the run's last second (Locust's printed table has it all). A
failure in that second still shows in Locust's exit code (1), which `make load` and the smoke test
check as well.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# Every step of the journey (journeys.py's request names): a run that misses one did not walk it.
JOURNEY_STEPS = (
    "POST /v1/auth:signup",
    "POST /v1/auth:login",
    "GET /v1/users:search",
    "POST /v1/connection-requests",
    "GET /v1/connection-requests?direction=incoming",
    "POST /v1/connection-requests/{id}:accept",
    "GET /v1/recipients",
    "POST /v1/capsules",
    "GET /v1/capsules?box=inbox",
    "GET /v1/capsules?box=inbox&status=ready",
    "POST /v1/capsules/{id}:open",
)


@dataclass(frozen=True)
class Row:
    """One line of `<prefix>_stats.csv`: a request name (or "Aggregated"), times in milliseconds."""

    method: str
    name: str
    requests: int
    failures: int
    median_ms: float
    p99_ms: float
    rps: float


@dataclass(frozen=True)
class Failure:
    method: str
    name: str
    error: str
    occurrences: int


def _number(raw: str) -> float:
    return float(raw) if raw not in ("", "N/A") else 0.0


def read_stats(prefix: Path) -> list[Row]:
    """The rows of `<prefix>_stats.csv`, the aggregate last."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        return [
            Row(
                method=line["Type"],
                name=line["Name"],
                requests=int(line["Request Count"]),
                failures=int(line["Failure Count"]),
                median_ms=_number(line["50%"]),
                p99_ms=_number(line["99%"]),
                rps=_number(line["Requests/s"]),
            )
            for line in csv.DictReader(f)
        ]


def read_failures(prefix: Path) -> list[Failure]:
    """The distinct errors of `<prefix>_failures.csv` (absent or empty: none)."""
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [
            Failure(line["Method"], line["Name"], line["Error"], int(line["Occurrences"])) for line in csv.DictReader(f)
        ]


def aggregate(rows: list[Row]) -> Row:
    found = [r for r in rows if r.name == "Aggregated"]
    if not found:
        raise ValueError("no Aggregated row in the stats CSV")
    return found[0]


def missing_steps(rows: list[Row]) -> list[str]:
    """The journey steps that no request of the run walked."""
    done = {r.name for r in rows if r.requests}  # journeys.py names each request "VERB /route"
    return [step for step in JOURNEY_STEPS if step not in done]


def summary(total: Row, failures: list[Failure]) -> str:
    """One line for the whole run (requests, failures, p50, p99, rate), then the distinct errors."""
    lines = [
        f"load: {total.requests} requests, {total.failures} failures, p50 {total.median_ms:g} ms, "
        f"p99 {total.p99_ms:g} ms, {total.rps:.1f} req/s"
    ]
    lines += [f"  FAILED {f.occurrences}x {f.name}: {f.error[:300]}" for f in failures]
    return "\n".join(lines)
