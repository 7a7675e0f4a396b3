"""The Locust command lines `make load` and the smoke tests run (standard library only: the
launcher and pytest import this, never Locust itself, whose gevent monkeypatches its importer)."""

from __future__ import annotations

import sys
from pathlib import Path

JOURNEYS = Path(__file__).resolve().parent / "journeys.py"


def locust_argv(*args: str) -> list[str]:
    """`python -m locust -f loadtest/journeys.py ARGS` in this interpreter."""
    return [sys.executable, "-m", "locust", "-f", str(JOURNEYS), *args]


def headless_argv(
    host: str,
    *,
    users: int,
    spawn_rate: float,
    run_time: str,
    csv_prefix: Path,
    capsule_lead: float,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """A headless run against the gateway at `host`, statistics to `<csv_prefix>_*.csv`, capsules
    unlocking `capsule_lead` seconds after sending (journeys.py's own option)."""
    return locust_argv(
        "--headless",
        "--host",
        host,
        "--users",
        str(users),
        "--spawn-rate",
        f"{spawn_rate:g}",
        "--run-time",
        run_time,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--capsule-lead",
        f"{capsule_lead:g}",
        *extra,
    )
