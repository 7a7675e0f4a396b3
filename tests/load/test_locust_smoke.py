"""The load generator's smoke run (issue 15): Locust's journeys (loadtest/journeys.py), headless and
bounded, against a test stack of the module's own; every step walked, not one failure.

Locust runs as a subprocess only: gevent monkeypatches whatever process imports it, and this one
runs pytest, asyncio and the stack's management. Its results are read from the CSV it writes
(loadtest/report.py, standard library only).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import bootstrap
from launcher.bootstrap import REPO
from launcher.infra import Infra
from launcher.keys import KeyPair
from launcher.process import free_port
from launcher.stack import Stack
from loadtest import report
from loadtest.command import headless_argv, locust_argv
from tests.conftest import CAPSULE_LEAD_SECONDS, start_test_stack

pytestmark = pytest.mark.slow(41)  # measured alone, stack included; scheduled first: see tests/conftest.py

USERS = 6
RUN_TIME = "15s"


@pytest.fixture(scope="module")
def load_stack(infra: Infra, jwt_keys: KeyPair) -> Iterator[Stack]:
    """A stack of the module's own: the load must not share the session stack with other tests.
    Capsules may unlock CAPSULE_LEAD_SECONDS after sending, so that they are opened within the run."""
    lead = {"CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(CAPSULE_LEAD_SECONDS)}
    stack = start_test_stack(infra, jwt_keys, service_env=lead)
    try:
        yield stack
    finally:
        stack.close()


def locust(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(150)
def test_every_journey_step_runs_without_a_failure(load_stack: Stack, tmp_path: Path) -> None:
    prefix = tmp_path / "smoke"
    run = locust(
        headless_argv(
            load_stack.gateway_url,
            users=USERS,
            spawn_rate=USERS,
            run_time=RUN_TIME,
            csv_prefix=prefix,
            # One second more than the services' minimum: the clock moves while the request travels.
            capsule_lead=CAPSULE_LEAD_SECONDS + 1,
        ),
        timeout=90,
    )
    output = run.stdout[-4000:] + run.stderr[-4000:]
    rows = report.read_stats(prefix)
    total = report.aggregate(rows)
    assert total.failures == 0, (report.read_failures(prefix), output)
    assert run.returncode == 0, output
    assert report.missing_steps(rows) == [], output
    assert total.requests >= len(report.JOURNEY_STEPS)
    print(report.summary(total, []))


@pytest.mark.timeout(150)
def test_distributed_mode_a_master_and_two_workers(load_stack: Stack, tmp_path: Path) -> None:
    """Locust's own scale-out: the master hands the users to its workers (each pairs its own) and
    sums their statistics; --capsule-lead reaches the workers with the run (a custom argument)."""
    port = free_port()
    worker_argv = locust_argv("--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
    logs = [open(tmp_path / f"worker-{i}.log", "w") for i in range(2)]  # noqa: SIM115 (closed below)
    workers = [subprocess.Popen(worker_argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    try:
        prefix = tmp_path / "distributed"
        master = ("--master", "--master-bind-port", str(port), "--expect-workers", "2")
        run = locust(
            headless_argv(
                load_stack.gateway_url,
                users=4,
                spawn_rate=4,
                run_time="10s",
                csv_prefix=prefix,
                capsule_lead=CAPSULE_LEAD_SECONDS + 1,
                extra=(*master, "--expect-workers-max-wait", "30"),
            ),
            timeout=90,
        )
        output = run.stdout[-4000:] + run.stderr[-4000:]
        rows = report.read_stats(prefix)
        assert report.aggregate(rows).failures == 0, (report.read_failures(prefix), output)
        assert run.returncode == 0, output
        assert report.missing_steps(rows) == [], output
        # A master runs no users itself: every request counted came from the workers.
        for worker in workers:
            assert worker.wait(timeout=30) == 0  # the master's quit ends them
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()


def test_make_load_names_its_options_and_refuses_to_attach_to_nothing() -> None:
    """`python3 -m launcher load`: its own options documented; --attach without a mesh fails at once
    (a port where nothing listens) instead of loading nobody."""
    env = {k: v for k, v in os.environ.items() if k != bootstrap.REEXEC_MARKER}

    def make_load(*args: str) -> subprocess.CompletedProcess[str]:
        # The machine's python3, as `make load` runs it (the launcher re-executes itself in .venv).
        argv = [str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "launcher", "load", *args]
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)

    usage = make_load("--help")
    assert usage.returncode == 0, usage.stderr
    for option in ("--attach", "--users", "--spawn-rate", "--run-time", "--capsule-lead"):
        assert option in usage.stdout
    env["GATEWAY_PORT"] = str(free_port())
    attach = make_load("--attach")
    assert attach.returncode == 1
    assert "no gateway answers" in attach.stderr
