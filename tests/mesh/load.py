"""A bounded, steady HTTP load through the gateway (loopback, a modest rate) that records every
call that did not answer as expected."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Call = Callable[[], Awaitable[Any]]


@dataclass
class Op:
    name: str
    call: Call
    idempotent: bool = True


@dataclass
class LoadResult:
    ok: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    # (op name, seconds) of every call, answered or not.
    durations: list[tuple[str, float]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + len(self.failures)

    def percentile(self, q: float, ops: Sequence[str] | None = None) -> float:
        """The q-quantile (0 < q ≤ 1, nearest rank) of the calls' durations, of `ops` only if given."""
        values = sorted(d for name, d in self.durations if ops is None or name in ops)
        if not values:
            return 0.0
        return values[min(len(values) - 1, max(0, int(q * len(values) + 0.5) - 1))]


class Load:
    """Starts `rate` calls per second, round-robin over `ops`, at most `concurrency` in flight."""

    def __init__(self, ops: Sequence[Op], rate: float = 120.0, concurrency: int = 16) -> None:
        self.ops = list(ops)
        self.rate = rate
        self.result = LoadResult()
        self._sem = asyncio.Semaphore(concurrency)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Condition()

    async def _one(self, op: Op) -> None:
        started = time.monotonic()
        try:
            response = await op.call()
            if response.status_code == 200:
                self.result.ok[op.name] += 1
            else:
                self.result.failures.append((op.name, f"{response.status_code} {response.text[:200]}"))
        except Exception as exc:  # a transport error is a failed call too
            self.result.failures.append((op.name, repr(exc)))
        finally:
            self.result.durations.append((op.name, time.monotonic() - started))
            self._sem.release()
            async with self._progress:
                self._progress.notify_all()

    async def _run(self) -> None:
        start = time.monotonic()
        for n, op in zip(itertools.count(), itertools.cycle(self.ops), strict=False):
            if self._stop.is_set():
                break
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not synchronisation
            await self._sem.acquire()
            task = asyncio.create_task(self._one(op))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def start(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> LoadResult:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._inflight:
            await asyncio.gather(*self._inflight)
        return self.result

    async def until(self, calls: int) -> None:
        """Wait until `calls` more calls have completed (proves traffic kept flowing)."""
        target = self.result.total + calls
        async with self._progress:
            await self._progress.wait_for(lambda: self.result.total >= target)
