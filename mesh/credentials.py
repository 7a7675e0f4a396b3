"""Mutual TLS for the mesh's Python workloads (SPEC §12): servers, channels, and who is calling.

    tls = MeshTLS.from_env()                       # MESH_TLS_DIR, or None with MESH_PLAINTEXT=1
    server.add_secure_port(listen, tls.server_credentials())   # client certificates required
    channel = MeshChannel("127.0.0.1:10000", ENVOY, tls)        # checks Envoy's certificate
    stub = channel.stub(AuthServiceStub)
    caller = caller_workload(context)              # "gateway", "capsules", "operator", ...

Rotation without dropped calls: the identity file (mesh/pki.py: key and certificate, replaced by a
rename) is looked at again at most once a second (`CHECK_SECONDS`). A server hands each new TLS
handshake the newest pair (gRPC's dynamic server credentials ask on every handshake); connections
already open keep theirs. A `MeshChannel` opens a new channel once the pair changed and lets the
old one finish what it carries (`RETIRE_GRACE_SECONDS`) before closing it.

The caller: a direct peer is named by its certificate (`peer_spiffe_id`, which gRPC sets when the
certificate has exactly one SPIFFE URI SAN). When the peer is Envoy, the caller is the one Envoy
names in `x-forwarded-client-cert` — Envoy sets that header itself from the certificate its own
client presented (SANITIZE_SET: a client's copy is replaced), and only Envoy's is trusted.

Plain text is a development switch, never a default: with neither MESH_TLS_DIR nor MESH_PLAINTEXT=1
a workload refuses to start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography import x509

from mesh.pki import CA_NAME, ENVOY, IDENTITY_NAME, server_name, split_identity, workload_of

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
# How long a retired channel may keep carrying calls it already started (the longest route
# timeout is 30 s; the services' own calls are bounded by their callers' deadlines, a few seconds).
RETIRE_GRACE_SECONDS = 30.0
XFCC_HEADER = "x-forwarded-client-cert"

StubT = TypeVar("StubT")


class TLSSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Material:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    generation: int


class MeshTLS:
    """This process's identity and the mesh CA, read from `directory` (identity.pem, ca.pem) and
    read again when they change."""

    def __init__(
        self, directory: Path, *, check_seconds: float = CHECK_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.directory = directory
        self._check_seconds = check_seconds
        self._clock = clock
        self._stamp: tuple[float, ...] = ()
        self._next_check = 0.0
        self._material = self._read(0)  # fails now, at start-up, when the files are missing or wrong

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MeshTLS | None:
        env = os.environ if environ is None else environ
        directory = env.get("MESH_TLS_DIR", "")
        if directory:
            return cls(Path(directory))
        if env.get("MESH_PLAINTEXT", "") == "1":
            log.warning("MESH_PLAINTEXT=1: this workload speaks plain text inside the mesh (development only)")
            return None
        raise TLSSetupError(
            "MESH_TLS_DIR is not set: name the directory of this workload's identity.pem and ca.pem "
            "(python -m mesh.pki issue), or set MESH_PLAINTEXT=1 to run without TLS (development only)"
        )

    def _files_stamp(self) -> tuple[float, ...]:
        stamps: list[float] = []
        for name in (IDENTITY_NAME, CA_NAME):
            st = os.stat(self.directory / name)
            stamps += [st.st_mtime_ns, st.st_ino, st.st_size]
        return tuple(stamps)

    def _read(self, generation: int) -> Material:
        stamp = self._files_stamp()
        key_pem, cert_pem = split_identity((self.directory / IDENTITY_NAME).read_bytes())
        ca_pem = (self.directory / CA_NAME).read_bytes()
        x509.load_pem_x509_certificates(ca_pem)
        self._stamp = stamp
        return Material(key_pem, cert_pem, ca_pem, generation)

    def current(self) -> Material:
        """The newest identity and CA; the files are looked at again at most every CHECK_SECONDS.
        A change that cannot be read (a half-finished rotation by hand) keeps the previous pair."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._check_seconds
            try:
                if self._files_stamp() != self._stamp:
                    self._material = self._read(self._material.generation + 1)
                    log.info("mesh certificate reloaded", extra={"fields": {"directory": str(self.directory)}})
            except (OSError, ValueError, TLSSetupError) as exc:
                log.warning(
                    "mesh certificate not reloaded; keeping the previous one", extra={"fields": {"error": str(exc)}}
                )
        return self._material

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that require a client certificate from the mesh CA and give every new
        handshake the newest identity."""
        served = self.current()

        def config(material: Material) -> Any:
            return grpc.ssl_server_certificate_configuration(
                [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
            )

        def fetch() -> Any:
            nonlocal served
            material = self.current()
            if material.generation == served.generation:
                return None  # gRPC keeps the configuration it has
            served = material
            return config(material)

        return grpc.dynamic_ssl_server_credentials(config(served), fetch, require_client_authentication=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        material = self.current()
        return grpc.ssl_channel_credentials(material.ca_pem, material.key_pem, material.cert_pem)


def add_port(server: grpc.aio.Server, address: str, tls: MeshTLS | None) -> int:
    """Listen on `address`: mutual TLS, or plain text when `tls` is None (MESH_PLAINTEXT=1)."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.server_credentials())


def open_channel(
    target: str, peer: str, tls: MeshTLS | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to `target`, which must present `peer`'s certificate (its DNS SAN is the TLS server
    name checked, whatever address `target` uses)."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(
        target,
        tls.channel_credentials(),
        options=[*options, ("grpc.ssl_target_name_override", server_name(peer))],
    )


class RetiredChannels:
    """Channels opened with an older certificate: each closed `grace` seconds after it retired,
    once the calls it already carries had time to end."""

    def __init__(self, grace: float = RETIRE_GRACE_SECONDS) -> None:
        self._grace = grace
        self._closing: set[asyncio.Task[None]] = set()

    def retire(self, *channels: grpc.aio.Channel) -> None:
        async def close_later() -> None:
            await asyncio.sleep(self._grace)  # their calls end within their deadlines
            await asyncio.gather(*(channel.close() for channel in channels))

        task = asyncio.get_running_loop().create_task(close_later())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def cancel(self) -> None:
        """At shutdown: the retired channels go with the process."""
        for task in list(self._closing):
            task.cancel()


class MeshChannel:
    """A channel to one mesh workload that follows this process's certificate rotation: `get()`
    (and `stub()`) return a channel opened with the current certificate; a channel opened with an
    older one is closed RETIRE_GRACE_SECONDS later, its calls finished."""

    def __init__(
        self,
        target: str,
        peer: str,
        tls: MeshTLS | None,
        options: Sequence[tuple[str, Any]] = (),
        *,
        retire_grace: float = RETIRE_GRACE_SECONDS,
    ) -> None:
        self.target = target
        self.peer = peer
        self._tls = tls
        self._options = tuple(options)
        self._generation = tls.current().generation if tls is not None else 0
        self._channel = open_channel(target, peer, tls, self._options)
        self._stubs: dict[type[Any], Any] = {}
        self._retired = RetiredChannels(retire_grace)

    def get(self) -> grpc.aio.Channel:
        if self._tls is not None:
            generation = self._tls.current().generation
            if generation != self._generation:
                old = self._channel
                self._channel = open_channel(self.target, self.peer, self._tls, self._options)
                self._generation = generation
                self._stubs.clear()
                self._retired.retire(old)
        return self._channel

    def stub(self, stub_class: Callable[[grpc.aio.Channel], StubT]) -> StubT:
        channel = self.get()
        stub = self._stubs.get(stub_class)  # type: ignore[call-overload]
        if stub is None:
            stub = self._stubs[stub_class] = stub_class(channel)  # type: ignore[index]
        return stub  # type: ignore[no-any-return]

    async def close(self, grace: float | None = None) -> None:
        self._retired.cancel()
        await self._channel.close(grace)


def peer_workload(context: grpc.aio.ServicerContext) -> str | None:
    """The workload named by the direct peer's certificate (None in plain text)."""
    values = context.auth_context().get("peer_spiffe_id")
    if not values:
        return None
    return workload_of(values[0].decode("utf-8", "replace"))


def xfcc_workload(value: str) -> str | None:
    """The client Envoy names in an x-forwarded-client-cert value (`By=...;URI=spiffe://...`): the
    last element is the hop from Envoy's own client."""
    element = value.rsplit(",", 1)[-1]
    for pair in element.split(";"):
        key, _, raw = pair.partition("=")
        if key.strip().lower() == "uri":
            return workload_of(raw.strip().strip('"'))
    return None


def caller_workload(context: grpc.aio.ServicerContext) -> str | None:
    """Who is calling: the direct peer, or when that is Envoy, the client Envoy authenticated
    (Envoy's own calls — health checks — carry no header and are Envoy's)."""
    peer = peer_workload(context)
    if peer != ENVOY:
        return peer
    for key, value in context.invocation_metadata() or ():
        if key == XFCC_HEADER:
            return xfcc_workload(str(value))
    return ENVOY
