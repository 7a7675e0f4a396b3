"""A real Envoy fed by an in-process control plane (on the test's event loop), in front of
stand-in grpc.aio instances (tests/launcher/standin.py). Blocking work (process start, admin
polls) runs in threads so the control plane keeps answering meanwhile.

`use_tls()` before starting anything: a temporary mesh CA, the control plane minting Envoy's
certificate from it (Envoy's listener and clusters speak mutual TLS), stand-ins serving TLS with
the identity they are given, and `client(workload)` channels to Envoy with that workload's
certificate. Without it, everything is plain text as before."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from controlplane.app import ControlPlane, ControlPlaneSettings

from launcher.process import GrpcHealthProbe, ManagedProcess, free_port, http_ok
from launcher.stack import envoy_cluster_health
from mesh import envoy_config
from mesh.credentials import MeshTLS, open_channel
from mesh.pki import ENVOY as ENVOY_WORKLOAD
from mesh.pki import MeshCA, server_name
from mesh.timing import TIMING
from mesh.topology import AUTH
from tests.conftest import Processes

ENVOY = str(Path(sys.executable).parent / "envoy")
SERVICE = AUTH.proto_service


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)


class XdsMesh:
    def __init__(self, processes: Processes, tmp_path: Path) -> None:
        self.processes = processes
        self.tmp_path = tmp_path
        self.cp_port = free_port()
        self.cp_admin_port = free_port()
        self.port = free_port()
        self.admin_port = free_port()
        self.node_id = f"test-envoy-{self.admin_port}"
        self.plane: ControlPlane | None = None
        self.envoy: ManagedProcess | None = None
        self.channel: grpc.aio.Channel | None = None
        self.ca: MeshCA | None = None
        self._clients: list[grpc.aio.Channel] = []

    def use_tls(self) -> MeshCA:
        self.ca = MeshCA.create(self.tmp_path / "mesh-ca")
        return self.ca

    def identity(self, workload: str, ca: MeshCA | None = None) -> Path:
        """A directory with a fresh certificate for `workload` (from the mesh CA unless `ca`)."""
        issuer = ca or self.ca
        assert issuer is not None, "use_tls() first"
        directory = self.tmp_path / "tls" / f"{workload}-{free_port()}"
        issuer.issue(workload).write(directory)
        return directory

    def client(self, workload: str, ca: MeshCA | None = None) -> grpc.aio.Channel:
        """A channel to Envoy's listener presenting `workload`'s certificate, checking Envoy's."""
        channel = open_channel(f"127.0.0.1:{self.port}", ENVOY_WORKLOAD, MeshTLS(self.identity(workload, ca)))
        self._clients.append(channel)
        return channel

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def cp_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.cp_admin_port}"

    async def start_plane(self, warmup: float = 0.0, lease_ttl: float | None = None) -> ControlPlane:
        """lease_ttl: longer leases for tests that register by hand, without heartbeats, and run
        longer than the default ttl (1.5 s)."""
        settings = ControlPlaneSettings(
            listen=f"127.0.0.1:{self.cp_port}",
            admin_listen=f"127.0.0.1:{self.cp_admin_port}",
            envoy_listen=f"127.0.0.1:{self.port}",
            warmup_seconds=warmup,
            services=(AUTH,),
            ca_dir=self.ca and self.tmp_path / "mesh-ca",
            timing=TIMING if lease_ttl is None else TIMING.with_lease_ttl(lease_ttl),
        )
        self.plane = await ControlPlane(settings).start()
        return self.plane

    async def start_envoy(
        self, *, ads_port: int | None = None, tls_dir: Path | None = None, wait_ready: bool = True
    ) -> None:
        """ads_port/tls_dir: another ADS server than the plane's (one serving TLS), reached with the
        identity in tls_dir. wait_ready=False: only wait for the admin port (an Envoy that may
        never get its configuration)."""
        config = envoy_config.build_xds_bootstrap(
            admin=("127.0.0.1", self.admin_port),
            control_plane=("127.0.0.1", ads_port or self.cp_port),
            node_id=self.node_id,
            tls_dir=tls_dir,
        )
        path = envoy_config.write_bootstrap(config, self.tmp_path / "envoy.json")
        argv = [ENVOY, "-c", str(path), "--base-id", str(self.admin_port), "--log-level", "warn", "--concurrency", "1"]
        ready_path = "/ready" if wait_ready else "/server_info"
        self.envoy = await asyncio.to_thread(
            self.processes.start, "envoy", argv, ready=lambda: http_ok(f"{self.admin_url}{ready_path}")
        )
        if self.ca is None:
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    async def start_instance(self, address: str, identity: str = AUTH.name) -> ManagedProcess:
        """A stand-in for auth at `address`; under TLS with `identity`'s certificate (another
        service's: an impostor Envoy must refuse)."""
        env = {"GRPC_LISTEN": address, "ADMIN_LISTEN": f"127.0.0.1:{free_port()}", "DRAIN_DELAY_SECONDS": "1"}
        ready: Callable[[], bool] = GrpcHealthProbe(address, SERVICE)
        if self.ca is not None:
            env["MESH_TLS_DIR"] = str(self.identity(identity))
            ready = TlsHealthProbe(address, identity, MeshTLS(self.identity("operator")))
        return await asyncio.to_thread(
            self.processes.start,
            f"standin-{address.rsplit(':')[1]}",
            [sys.executable, "-m", "tests.launcher.standin"],
            env=env,
            ready=ready,
        )

    async def call(self) -> str:
        assert self.channel is not None
        stub = self.channel.unary_unary(f"/{SERVICE}/Probe")
        call = stub(b"", timeout=10)
        await call
        return dict(await call.trailing_metadata() or ())["x-instance"]  # type: ignore[arg-type]

    async def health(self) -> dict[str, bool]:
        return await asyncio.to_thread(envoy_cluster_health, self.admin_url, "auth")

    async def admin(self, path: str) -> Any:
        return await asyncio.to_thread(get_json, f"{self.admin_url}{path}")

    async def cp_admin(self, path: str) -> Any:
        return await asyncio.to_thread(get_json, f"{self.cp_admin_url}{path}")

    async def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await check()
            if last:
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what} not reached within {timeout} s (last: {last})")

    async def cds_version(self) -> str:
        dump = await self.admin("/config_dump?resource=dynamic_active_clusters")
        versions = {c.get("version_info") for c in dump.get("configs", [])}
        assert len(versions) == 1, versions
        return str(versions.pop())

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        if self.channel is not None:
            await self.channel.close()
        if self.envoy is not None:
            await asyncio.to_thread(self.envoy.stop, 5)
        if self.plane is not None:
            await self.plane.stop(0)


class TlsHealthProbe:
    """The stand-in's health over mutual TLS, checking it presents `workload`'s certificate."""

    def __init__(self, address: str, workload: str, tls: MeshTLS) -> None:
        self.address, self.workload, self.tls = address, workload, tls

    def __call__(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        options = [("grpc.ssl_target_name_override", server_name(self.workload))]
        with grpc.secure_channel(self.address, self.tls.channel_credentials(), options=options) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=1.0
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
async def xds_mesh(processes: Processes, tmp_path: Path) -> AsyncIterator[XdsMesh]:
    mesh = XdsMesh(processes, tmp_path)
    try:
        yield mesh
    finally:
        await mesh.close()
