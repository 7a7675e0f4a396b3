"""Running h2load (Debian's nghttp2-client) and reading its figures.

h2load drives HTTP/1.1, HTTP/2 and raw gRPC unary calls (a framed protobuf body with gRPC's
headers) from one C process, so the load generator does not eat the cores it measures.
Latency percentiles come from its per-request log (`--log-file`: start, status, duration µs);
status codes, errors and body bytes from its summary. `run(..., keep_output=path)` keeps h2load's
own report there (the token in its command line masked).
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
    # Answers by status (h2load's "succeeded" is any status < 400: 3xx counts there, not here).
    status_2xx: int = 0
    status_other: int = 0
    # Requests that got no answer (connection errors, timeouts).
    errored: int = 0
    done: int = 0
    # Response body bytes per answered request (h2load's "data": for gRPC the framed message).
    body_bytes: float = 0.0
    seconds: float = 0.0

    @property
    def not_2xx(self) -> int:
        """Every request that did not end in a 2xx answer."""
        return self.status_other + self.errored


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
    keep_output: Path | None = None,
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
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + warmup + 60)
        out = done.stdout
        if keep_output is not None:
            _keep(keep_output, argv, out + done.stderr)
        if done.returncode != 0 or "finished in" not in out:
            raise SystemExit(f"{name}: h2load failed ({done.returncode}): {out[-800:]} {done.stderr[-800:]}")
        durations = sorted(
            int(parts[2]) for line in log_file.read_text().splitlines() if len(parts := line.split("\t")) >= 3
        )
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    traffic = re.search(r"traffic: .* \((\d+)\) data", out)
    assert finished and counts and codes and traffic, out
    answered = int(counts.group(1))
    return Result(
        name=name,
        requests_per_second=float(finished.group(3)),
        succeeded=int(counts.group(2)),
        failed=int(counts.group(3)),
        p50_ms=_percentile(durations, 0.50) / 1000,
        p99_ms=_percentile(durations, 0.99) / 1000,
        mean_ms=(sum(durations) / len(durations) / 1000) if durations else 0.0,
        status_2xx=int(codes.group(1)),
        status_other=sum(int(codes.group(i)) for i in (2, 3, 4)),
        errored=int(counts.group(4)) + int(counts.group(5)),
        done=answered,
        body_bytes=int(traffic.group(1)) / answered if answered else 0.0,
        seconds=float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1),
    )


def _keep(path: Path, argv: list[str], output: str) -> None:
    """h2load's report with its command line, the bearer token masked."""
    shown = [re.sub(r"(?i)^(authorization: Bearer ).*", r"\1<token>", arg) for arg in argv]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(shown) + "\n\n" + output)


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])
