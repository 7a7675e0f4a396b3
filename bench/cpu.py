"""CPU time of processes, from /proc: how many microseconds of CPU each hop spends per request."""

from __future__ import annotations

import os

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
    """Snapshot named processes before a run, then report µs of CPU per request for each."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def per_request_us(self, requests: int) -> dict[str, float]:
        if requests <= 0:
            return {}
        return {name: (cpu_seconds(pid) - self.start[name]) / requests * 1e6 for name, pid in self.pids.items()}
