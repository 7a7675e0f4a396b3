"""Running h2load (Debian's nghttp2-client) and reading its figures.

h2load drives HTTP/1.1, HTTP/2 and raw gRPC unary calls (a framed protobuf body with gRPC's
headers) from one C process, so the load generator does not eat the cores it measures.
Latency percentiles come from its per-request log (`--log-file`: start, status, duration µs).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    name: str
    requests_per_second: float
    succeeded: int
    failed: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    print("[bench] installing h2load (apt-get install nghttp2-client)", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=True, capture_output=True)
    found = shutil.which("h2load")
    if not found:
        raise SystemExit("h2load is not available (Debian package nghttp2-client)")
    return found


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def run(
    name: str,
    url: str,
    *,
    clients: int,
    seconds: int,
    warmup: int,
    headers: dict[str, str] | None = None,
    grpc_body: bytes | None = None,
    http1: bool = False,
) -> Result:
    h2load = ensure_h2load()
    with tempfile.TemporaryDirectory() as tmp:
        log_file = Path(tmp) / "requests.log"
        argv = [
            h2load,
            "-c",
            str(clients),
            "-m",
            "1",
            "-D",
            str(seconds),
            "--warm-up-time",
            str(warmup),
            "--log-file",
            str(log_file),
        ]
        if http1:
            argv.append("--h1")
        for key, value in (headers or {}).items():
            argv += ["-H", f"{key}: {value}"]
        if grpc_body is not None:
            body = Path(tmp) / "body.bin"
            body.write_bytes(grpc_frame(grpc_body))
            argv += ["-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body)]
        argv.append(url)
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=seconds + warmup + 60).stdout
        durations = sorted(
            int(parts[2]) for line in log_file.read_text().splitlines() if len(parts := line.split("\t")) >= 3
        )
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    assert counts, out
    return Result(
        name=name,
        requests_per_second=rps,
        succeeded=int(counts.group(1)),
        failed=int(counts.group(2)),
        p50_ms=_percentile(durations, 0.50) / 1000,
        p99_ms=_percentile(durations, 0.99) / 1000,
        mean_ms=(sum(durations) / len(durations) / 1000) if durations else 0.0,
    )


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])
