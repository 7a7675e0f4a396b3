"""A private redis-server for outage tests: started in the foreground on a free port, so a test
can freeze it (SIGSTOP: Redis keeps its data but answers nothing, like a partition), thaw it, or
kill and restart it (empty: no persistence). Never the machine's own Redis. On a `host` (a network
namespace of tests/netns) it runs inside it and listens on its address."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from launcher.process import free_port
from launcher.stack import Host


class RedisServer:
    def __init__(self, log_dir: Path, host: Host | None = None) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server binary not installed")
        self.host = host
        self.address = host.address if host is not None else "127.0.0.1"
        self.port = free_port()  # free here; a fresh namespace has every port free
        self.log_dir = log_dir
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--bind", self.address, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        if self.host is not None:
            # Reached from other hosts of the namespace network, which has no password.
            argv = self.host.wrap([*argv, "--protected-mode", "no"])
        with open(self.log_dir / f"redis-{self.port}.log", "ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def freeze(self) -> None:
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGCONT)  # a frozen process would not die cleanly
            self.popen.kill()
            self.popen.wait(10)
