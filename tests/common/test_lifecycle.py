"""ServiceHost's lifecycle, in process: background jobs start once the instance is SERVING and
are stopped (signalled, awaited within a bound, cancelled past it) before the closers run; a job
that crashes is logged and restarted with back-off; and when `run()` returns, nothing it started
is still running — not the readiness check, not an admin connection — and the admin port is
closed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from services.common.background import BackgroundTasks
from services.common.server import ServiceHost
from services.common.settings import DatabaseSettings, ServiceSettings


def settings(background_stop_seconds: float = 2.0) -> ServiceSettings:
    return ServiceSettings(
        name="lifecycle-probe",
        grpc_listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        database=DatabaseSettings("postgresql+asyncpg://127.0.0.1:1/unused"),
        redis_url="redis://127.0.0.1:1/0",
        cache_prefix="lifecycle-probe:",
        jwt_public_key_file="",
        jwt_issuer="",
        jwt_audience="",
        log_level="INFO",
        drain_delay_seconds=0.0,
        shutdown_grace_seconds=1.0,
        background_stop_seconds=background_stop_seconds,
    )


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait (polling the state) until `condition()` holds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def always_ready() -> None:
    return None


class Running:
    """`host.run()` as a task, with the tasks that existed before it (the session's own)."""

    def __init__(self, host: ServiceHost, ready: Callable[[], Awaitable[None]] = always_ready) -> None:
        self.host = host
        self.stop = asyncio.Event()
        self.before = asyncio.all_tasks()
        self.task = asyncio.create_task(host.run(ready, stop=self.stop))

    async def admin_port(self) -> int:
        await until(lambda: self.host.admin is not None)
        assert self.host.admin is not None
        return self.host.admin.port

    async def finish(self, within: float = 10.0) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=within)

    def left_running(self) -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() - self.before if not t.done() and t is not asyncio.current_task()]


async def test_jobs_start_once_serving_and_stop_before_the_closers() -> None:
    host = ServiceHost(settings())
    events: list[str] = []
    started = asyncio.Event()

    async def job(stop: asyncio.Event) -> None:
        events.append("job started")
        started.set()
        await stop.wait()
        events.append("job told to stop")
        await asyncio.sleep(0.05)  # the pass it was in the middle of
        events.append("job returned")

    async def closer() -> None:
        events.append("closer")

    host.add_background("probe", job)
    host.on_close(closer)
    gate = asyncio.Event()

    async def ready() -> None:
        await gate.wait()

    running = Running(host, ready)
    port = await running.admin_port()
    assert events == [], "a job must not start before the instance is ready"
    gate.set()
    await asyncio.wait_for(started.wait(), timeout=10)
    await running.finish()

    assert events == ["job started", "job told to stop", "job returned", "closer"]
    assert running.left_running() == []
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_job_that_overruns_its_bound_is_cancelled_and_the_stop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = ServiceHost(settings(background_stop_seconds=0.2))
    cancelled = asyncio.Event()
    started = asyncio.Event()
    closed = asyncio.Event()

    async def stubborn(stop: asyncio.Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never looks at `stop`
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def closer() -> None:
        closed.set()

    host.add_background("stubborn", stubborn)
    host.on_close(closer)
    running = Running(host)
    await asyncio.wait_for(started.wait(), timeout=10)
    with caplog.at_level(logging.WARNING, logger="services.common.background"):
        await running.finish(within=5)
    assert cancelled.is_set() and closed.is_set()
    assert any("did not stop in time" in r.getMessage() for r in caplog.records)
    assert running.left_running() == []


async def test_a_readiness_check_under_way_at_stop_is_awaited() -> None:
    cleaned_up = asyncio.Event()

    async def ready() -> None:
        try:
            await asyncio.Event().wait()  # the database never answers
        finally:
            await asyncio.sleep(0.3)  # closing its connection takes a while
            cleaned_up.set()

    running = Running(ServiceHost(settings()), ready)
    await running.admin_port()
    await running.finish()
    assert cleaned_up.is_set(), "run() returned while the readiness check was still being cancelled"
    assert running.left_running() == []


async def test_an_admin_connection_under_way_is_ended_and_the_port_closed() -> None:
    host = ServiceHost(settings())
    running = Running(host)
    port = await running.admin_port()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n")  # the request's end never comes
    await writer.drain()
    await until(lambda: host.admin is not None and host.admin.connections == 1)

    await running.finish()
    assert running.left_running() == [], "an admin connection outlived run()"
    assert await asyncio.wait_for(reader.read(), timeout=1) == b""  # the server side is closed
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


def restarts(name: str) -> float:
    return REGISTRY.get_sample_value("background_task_restarts_total", {"task": name}) or 0.0


async def test_a_crashing_job_is_logged_and_restarted_with_back_off(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks(first_restart_delay=0.05, max_restart_delay=1.0)
    starts: list[float] = []
    steady = asyncio.Event()

    async def flaky(stop: asyncio.Event) -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            raise RuntimeError("first run fails")
        if len(starts) == 2:
            return  # ending before it was told to is a failure too
        steady.set()
        await stop.wait()

    tasks.add("flaky", flaky)
    before = restarts("flaky")
    with caplog.at_level(logging.WARNING, logger="services.common.background"):
        tasks.start()
        await asyncio.wait_for(steady.wait(), timeout=10)
        await tasks.stop(bound_seconds=1)

    assert len(starts) == 3
    assert restarts("flaky") - before == 2
    assert starts[1] - starts[0] >= 0.05 and starts[2] - starts[1] >= 0.1, "the back-off doubles"
    crashed = [r for r in caplog.records if r.getMessage() == "background task crashed"]
    assert len(crashed) == 1 and crashed[0].exc_info is not None
    assert any(r.getMessage() == "background task returned before it was stopped" for r in caplog.records)


async def test_the_control_plane_stops_its_tasks_and_admin_connections_before_stop_returns() -> None:
    from controlplane.app import ControlPlane, ControlPlaneSettings

    before = asyncio.all_tasks()
    settings = ControlPlaneSettings(listen="127.0.0.1:0", admin_listen="127.0.0.1:0", warmup_seconds=60)
    plane = await ControlPlane(settings).start()  # sweeping leases, warming up for a minute
    assert plane.admin_server is not None
    port = plane.admin_server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /status HTTP/1.0\r\n")
    await writer.drain()
    await until(lambda: plane.admin_server is not None and plane.admin_server.connections == 1)

    await asyncio.wait_for(plane.stop(grace=0), timeout=10)
    left = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert left == []
    assert await asyncio.wait_for(reader.read(), timeout=1) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
