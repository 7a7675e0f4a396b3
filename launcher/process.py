"""Child processes of the stack: start with a log file, wait until ready, stop politely.

Each process writes stdout and stderr to its own log file. Readiness is a probe polled until it
answers (never a fixed sleep); if the process exits meanwhile, start-up fails at once with the
last lines of its log. Stopping is SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.bootstrap import REPO

if TYPE_CHECKING:  # the launcher imports this module before the venv (and grpc) exists
    from mesh.credentials import MeshTLS

ReadyProbe = Callable[[], bool]


class StartupError(RuntimeError):
    """A process exited or did not become ready in time."""


# Ports for test and bench processes come from below Linux's ephemeral range (32768-60999), from
# which outgoing connections take their source ports: a port found free by bind(0) and released is
# in that range, and a busy test's next connection can take it before the child binds it. A process
# walks its slice of the range (see use_port_slice) from a random point and never hands a port out
# twice; a stack's ports stay unbound for seconds (until its processes start), so processes that
# share the machine at once (pytest-xdist's workers) get disjoint slices.
FREE_PORT_RANGE = range(20000, 32000)
_ports = FREE_PORT_RANGE
_handed_out: set[int] = set()
_cursor = random.randrange(len(_ports))


def use_port_slice(index: int, count: int) -> None:
    """Hand out ports from slice `index` of `count` equal slices of FREE_PORT_RANGE only."""
    global _ports, _cursor
    size = len(FREE_PORT_RANGE) // count
    _ports = FREE_PORT_RANGE[index * size : (index + 1) * size]
    _cursor = random.randrange(len(_ports))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now and this process never handed out before (tiny race
    until the child binds it; see FREE_PORT_RANGE)."""
    global _cursor
    for _ in range(len(_ports)):
        port = _ports[_cursor % len(_ports)]
        _cursor += 1
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise StartupError(f"no free port left in {_ports.start}-{_ports.stop - 1} on {host}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class ManagedProcess:
    """One child process with its own log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        ready: ReadyProbe | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.ready = ready
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> ManagedProcess:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches the launcher only, which then stops
                # the processes in order instead of all of them dying at once.
                start_new_session=True,
            )
        return self

    def failure(self, what: str) -> StartupError:
        return StartupError(f"{self.name} {what}; last lines of {self.log_path}:\n{tail(self.log_path)}")

    def wait_ready(self, timeout: float = 60.0) -> ManagedProcess:
        """Poll the readiness probe until it answers; fail fast when the process exits."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        try:
            while True:
                code = self.returncode
                if code is not None:
                    raise self.failure(f"exited with code {code} before becoming ready")
                if self.ready is None or self.ready():
                    return self
                if time.monotonic() > deadline:
                    raise self.failure(f"not ready after {timeout:.0f} s")
                time.sleep(delay)
                delay = min(delay * 1.5, 0.25)
        finally:
            close = getattr(self.ready, "close", None)
            if callable(close):
                close()

    def send_signal(self, sig: int) -> None:
        if self.running and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """Exit code, or None if still running after `timeout`."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """`sig` (SIGTERM: graceful), wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.popen is None:
            return None
        if self.running:
            self.send_signal(sig)
            if self.wait(timeout) is None:
                self.send_signal(signal.SIGKILL)
                self.wait(5.0)
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL now (a crash, for fault tests)."""
        return self.stop(timeout=5.0, sig=signal.SIGKILL)


def stop_all(processes: Sequence[ManagedProcess], timeout: float = 15.0) -> None:
    """SIGTERM every process at once, then wait for all (one shared deadline), SIGKILL laggards."""
    for proc in processes:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in processes:
        if proc.wait(max(0.0, deadline - time.monotonic())) is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5.0)


def finish(proc: ManagedProcess, timeout: float = 180.0) -> None:
    """Wait for a started one-shot command (a migration); fail with its last lines if it fails or
    overruns. Several started first and finished in turn run side by side (the stack's migrations)."""
    code = proc.wait(timeout)
    if code is None:
        proc.kill()
        raise proc.failure(f"did not finish within {timeout:.0f} s")
    if code != 0:
        raise proc.failure(f"failed with exit code {code}")


# --- readiness probes --------------------------------------------------------------------------


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class GrpcHealthProbe:
    """`grpc.health.v1.Health/Check(service)` answers SERVING — the contract's readiness."""

    def __init__(
        self, address: str, service: str, timeout: float = 1.0, *, tls: MeshTLS | None = None, peer: str = ""
    ) -> None:
        """`tls` (with the workload `peer` whose certificate the server must present): ask over
        mutual TLS, as whoever `tls` names (the launcher: the operator)."""
        self.address = address
        self.service = service
        self.timeout = timeout
        self.tls = tls
        self.peer = peer
        self._channel: object | None = None

    def __call__(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        if self._channel is None:
            options: list[tuple[str, int | str]] = [
                # Its own subchannel, with a short reconnect back-off: polling a server that is
                # still starting must retry promptly, not after gRPC's default 1 s → 120 s.
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", 50),
                ("grpc.min_reconnect_backoff_ms", 50),
                ("grpc.max_reconnect_backoff_ms", 250),
            ]
            if self.tls is None:
                self._channel = grpc.insecure_channel(self.address, options=options)
            else:
                from mesh.pki import server_name

                options.append(("grpc.ssl_target_name_override", server_name(self.peer)))
                self._channel = grpc.secure_channel(self.address, self.tls.channel_credentials(), options=options)
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=self.timeout)
        except grpc.RpcError:
            return False
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            self.close()
            return True
        return False

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()  # type: ignore[attr-defined]
            self._channel = None
