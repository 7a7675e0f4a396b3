"""CPU time of processes, from /proc: how many microseconds of CPU each hop spends per request.

A process's figure is user + system time of all its threads (grpc's poller thread, Envoy's
workers included). Besides single processes a meter takes groups whose members can change during
the run (Postgres backends: a pool may open a connection mid-run): a member that appears counts
from zero, one that exits before the end is missed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based) → indexes 11, 12.
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


class CpuMeter:
    """Snapshot named processes (and groups) before a run, then report µs of CPU per request."""

    def __init__(
        self, pids: Mapping[str, int], groups: Mapping[str, Callable[[], Iterable[int]]] | None = None
    ) -> None:
        self.pids = dict(pids)
        self.groups = dict(groups or {})
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.group_start = {name: self._sample(list_pids) for name, list_pids in self.groups.items()}

    @staticmethod
    def _sample(list_pids: Callable[[], Iterable[int]]) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in list_pids()}

    def seconds(self) -> dict[str, float]:
        """CPU seconds spent by each process and group since the meter was made."""
        spent = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        for name, list_pids in self.groups.items():
            before = self.group_start[name]
            now = self._sample(list_pids)
            spent[name] = sum(seconds - before.get(pid, 0.0) for pid, seconds in now.items())
        return spent

    def per_request_us(self, requests: int) -> dict[str, float]:
        if requests <= 0:
            return {}
        return {name: seconds / requests * 1e6 for name, seconds in self.seconds().items()}


def redis_pid(redis_url: str) -> int | None:
    """The Redis server's pid (from INFO), when it runs on this machine."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.info("server")["process_id"])
    except Exception:
        return None
    finally:
        client.close()


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, all cores (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


class MachineMeter:
    """How busy the whole machine was (all cores, every process) since the meter was made."""

    def __init__(self) -> None:
        self.start = _machine_ticks()

    def busy_pct(self) -> float:
        busy, total = _machine_ticks()
        return 100.0 * (busy - self.start[0]) / max(total - self.start[1], 1)


def pid_of(process: object) -> int:
    """The pid of a started process (a launcher ManagedProcess, a Popen): what the meters read."""
    pid = getattr(process, "pid", None)
    if not isinstance(pid, int):
        raise RuntimeError(f"{getattr(process, 'name', process)} is not running")
    return pid
