"""Background tasks owned by a process's lifecycle, and the one right way to end a task.

`BackgroundTasks` runs long-lived jobs beside the gRPC server (the capsules unlocker, the
housekeeping purge): `ServiceHost` starts them once the instance is SERVING and stops them during
its graceful stop. Each job is a factory `job(stop)` returning a coroutine that must return soon
after the event `stop` is set. Stopping is:

    signal (set `stop`) → wait up to the bound for every job to return → cancel those that overran
    → wait for the cancellations → log every error

so nothing a job started is left running when the process closes the pools it used.

A job that raises (or returns before it was told to stop) is logged and started again after a
back-off that doubles up to a ceiling and starts over once a run lasted longer than the ceiling.
Restarting was chosen over reporting the instance unhealthy: the jobs are idempotent passes that
every instance runs (SKIP LOCKED makes them safe to run anywhere), and their usual cause of failure
— Postgres or Redis away — is shared by every instance, so an unhealthy report would make Envoy
eject the whole fleet for something the user-facing calls may well survive. A job that keeps
failing stays visible: an error log per crash and `background_task_restarts_total{task}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.common.telemetry import BACKGROUND_RESTARTS, BACKGROUND_RUNNING

log = logging.getLogger(__name__)

Job = Callable[[asyncio.Event], Awaitable[None]]


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel `tasks` and wait until each has really ended. A task's own CancelledError is not
    raised here, but a cancellation of the caller still is (unlike `suppress(CancelledError)`
    around `await task`, which would swallow it); errors the tasks raised are logged."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception(), extra={"fields": {"task": _name(task)}})


async def sweep(
    stop: asyncio.Event,
    name: str,
    run_once: Callable[[], Awaitable[int]],
    *,
    interval: float,
    batch_size: int | None = None,
    fields: dict[str, Any] | None = None,
) -> None:
    """The loop of a batch job (the capsules unlocker and eraser, the invite resumer, the push
    sender): `run_once()` passes until `stop` is set, a pause of `interval` between them unless a
    pass took a whole `batch_size` (more are due). A failed pass (Postgres or Redis away) is
    logged and retried after the pause: the loop never dies of it."""
    log.info(f"{name} started", extra={"fields": fields or {}})
    while not stop.is_set():
        try:
            taken = await run_once()
        except Exception as exc:
            log.warning(f"{name} pass failed", extra={"fields": {"error": str(exc)}})
            taken = 0
        if batch_size is not None and taken >= batch_size:
            continue  # more are due: no pause
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
    log.info(f"{name} stopped")


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


@dataclass
class _Entry:
    name: str
    job: Job
    task: asyncio.Task[None] | None = None


class BackgroundTasks:
    def __init__(self, *, first_restart_delay: float = 1.0, max_restart_delay: float = 60.0) -> None:
        self._entries: list[_Entry] = []
        self._stop = asyncio.Event()
        self._first_delay = first_restart_delay
        self._max_delay = max_restart_delay

    def add(self, name: str, job: Job) -> None:
        if any(entry.name == name for entry in self._entries):
            raise ValueError(f"background task {name!r} is already registered")
        self._entries.append(_Entry(name, job))

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self._entries]

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for entry in self._entries:
            if entry.task is None and not self._stop.is_set():
                entry.task = loop.create_task(self._supervise(entry), name=f"background:{entry.name}")

    def signal_stop(self) -> None:
        """Ask every job to finish its current pass; `stop()` waits for them."""
        self._stop.set()

    async def stop(self, bound_seconds: float) -> None:
        """Signal, wait up to `bound_seconds` for every job, cancel the ones that overran."""
        self._stop.set()
        tasks = {entry.task: entry.name for entry in self._entries if entry.task is not None}
        if not tasks:
            return
        _, overran = await asyncio.wait(tasks, timeout=bound_seconds)
        for task in overran:
            log.warning(
                "background task did not stop in time; cancelled",
                extra={"fields": {"task": tasks[task], "bound_s": bound_seconds}},
            )
        await cancel_and_wait(*overran)

    async def _supervise(self, entry: _Entry) -> None:
        delay = self._first_delay
        running = BACKGROUND_RUNNING.labels(entry.name)
        while not self._stop.is_set():
            started = time.monotonic()
            running.set(1)
            try:
                await entry.job(self._stop)
            except Exception:
                log.exception("background task crashed", extra={"fields": {"task": entry.name}})
            else:
                if self._stop.is_set():
                    break
                log.error("background task returned before it was stopped", extra={"fields": {"task": entry.name}})
            finally:
                running.set(0)
            if self._stop.is_set():
                break
            if time.monotonic() - started > self._max_delay:
                delay = self._first_delay  # it had been fine for a while: a fresh failure
            BACKGROUND_RESTARTS.labels(entry.name).inc()
            log.warning("restarting background task", extra={"fields": {"task": entry.name, "after_s": delay}})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = min(delay * 2, self._max_delay)
