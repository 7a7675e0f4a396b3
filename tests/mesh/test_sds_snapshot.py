"""Envoy's secrets in the control plane's snapshots (SDS): only a TLS snapshot carries them, a
snapshot naming a secret it lacks is refused, a renewal moves the SDS version and nothing else, and
the certificate is renewed at half its life."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from controlplane import resources as rs
from controlplane.app import ControlPlane, ControlPlaneSettings
from controlplane.cache import PROXYLESS
from controlplane.envoy_identity import EnvoyIdentity
from controlplane.snapshot import InconsistentSnapshot, MeshSnapshots, Snapshot, check_consistent
from cryptography import x509

from mesh.pki import Issued, MeshCA
from mesh.topology import AUTH

LISTEN = ("127.0.0.1", 10000)


def secrets(ca: MeshCA) -> dict[str, bytes]:
    issued = ca.issue("envoy")
    return {"key_pem": issued.key_pem, "cert_pem": issued.cert_pem, "ca_pem": issued.ca_pem}


def test_a_tls_snapshot_without_its_secrets_is_refused(tmp_path: Path) -> None:
    snapshots = MeshSnapshots(listen=LISTEN, services=(AUTH,), tls=True)
    with pytest.raises(InconsistentSnapshot, match="envoy-identity"):
        snapshots.build({})
    snapshots.use_envoy_identity(**secrets(MeshCA.create(tmp_path)))
    envoy, proxyless = snapshots.build({})
    assert set(envoy.resources[rs.SECRET]) == {"envoy-identity", "mesh-ca"}
    check_consistent(envoy)
    # The check itself: drop one secret and the listener (and the clusters) name a missing one.
    partial = Snapshot.of(
        {
            **{t: list(envoy.resources[t].values()) for t in rs.PUSH_ORDER},
            rs.SECRET: [envoy.resources[rs.SECRET]["mesh-ca"]],
        }
    )
    with pytest.raises(InconsistentSnapshot, match="listener 'grpc_ingress' uses secret 'envoy-identity'"):
        check_consistent(partial)
    # Proxyless clients get no secrets, and no SDS version.
    assert proxyless.resources[rs.SECRET] == {} and rs.SECRET not in proxyless.versions


def test_a_plain_text_snapshot_has_no_secrets_and_no_sds_version() -> None:
    envoy, _ = MeshSnapshots(listen=LISTEN, services=(AUTH,)).build({})
    assert envoy.resources[rs.SECRET] == {} and rs.SECRET not in envoy.versions
    assert envoy.version(rs.SECRET) == ""


def test_a_renewal_moves_the_sds_version_only(tmp_path: Path) -> None:
    ca = MeshCA.create(tmp_path)
    snapshots = MeshSnapshots(listen=LISTEN, services=(AUTH,), tls=True)
    snapshots.use_envoy_identity(**secrets(ca))
    before, _ = snapshots.build({})
    snapshots.use_envoy_identity(**secrets(ca))
    after, _ = snapshots.build({})
    assert {t for t in rs.PUSH_ORDER if before.version(t) != after.version(t)} == {rs.SECRET}
    for type_url in (rs.CLUSTER, rs.LISTENER, rs.ROUTE, rs.ENDPOINT):
        assert all(after.resources[type_url][n] is m for n, m in before.resources[type_url].items())


def test_the_control_plane_mints_envoys_certificate_and_publishes_renewals(tmp_path: Path) -> None:
    ca = MeshCA.create(tmp_path / "ca")
    plane = ControlPlane(ControlPlaneSettings(services=(AUTH,), ca_dir=tmp_path / "ca", cert_ttl_seconds=600))
    plane.ready = True  # as after the warm-up
    plane._rebuild()
    first = plane.cache.default
    assert first is not None and plane.envoy_identity is not None
    cert = x509.load_pem_x509_certificate(
        first.resources[rs.SECRET]["envoy-identity"].tls_certificate.certificate_chain.inline_bytes
    )  # type: ignore[attr-defined]
    assert cert.subject.rfc4514_string() == "CN=envoy"
    assert cert.issuer == ca.cert.subject
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life <= datetime.timedelta(seconds=600) + datetime.timedelta(minutes=5)  # backdated 5 min
    issued = plane.rotate_envoy_certificate()
    second = plane.cache.default
    assert second is not None
    assert {t for t in second.versions if second.versions[t] != first.versions[t]} == {rs.SECRET}
    assert (
        second.resources[rs.SECRET]["envoy-identity"].tls_certificate.certificate_chain.inline_bytes == issued.cert_pem
    )  # type: ignore[attr-defined]
    proxyless = plane.cache.default_for(PROXYLESS)
    assert proxyless is not None and not proxyless.resources[rs.SECRET]


def test_plain_text_control_plane_has_no_certificate_to_rotate() -> None:
    plane = ControlPlane(ControlPlaneSettings(services=(AUTH,)))
    assert plane.envoy_identity is None
    with pytest.raises(RuntimeError, match="MESH_CA_DIR"):
        plane.rotate_envoy_certificate()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESH_CA_DIR", str(tmp_path))
    monkeypatch.setenv("MESH_CERT_TTL_SECONDS", "3600")
    # Envoy's key is served only over mutual TLS: a CA without the control plane's own identity
    # does not start.
    monkeypatch.delenv("MESH_TLS_DIR", raising=False)
    monkeypatch.setenv("MESH_PLAINTEXT", "1")
    with pytest.raises(SystemExit, match="MESH_CA_DIR needs MESH_TLS_DIR"):
        ControlPlaneSettings.from_env()
    ca = MeshCA.create(tmp_path)
    ca.issue("control-plane").write(tmp_path / "control-plane")
    monkeypatch.setenv("MESH_TLS_DIR", str(tmp_path / "control-plane"))
    settings = ControlPlaneSettings.from_env()
    assert settings.ca_dir == tmp_path and settings.cert_ttl_seconds == 3600
    monkeypatch.setenv("MESH_CERT_TTL_SECONDS", "90000")
    with pytest.raises(SystemExit, match="MESH_CERT_TTL_SECONDS"):
        ControlPlaneSettings.from_env()
    monkeypatch.delenv("MESH_CA_DIR")
    monkeypatch.delenv("MESH_CERT_TTL_SECONDS")
    assert ControlPlaneSettings.from_env().ca_dir is None
    assert ControlPlaneSettings.from_env().cert_ttl_seconds == 86400
    for bad in (86401.0, 0.0):
        with pytest.raises(ValueError, match="cert_ttl_seconds"):
            ControlPlaneSettings(cert_ttl_seconds=bad)


def test_renewal_at_half_life(tmp_path: Path) -> None:
    now = [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)]
    published: list[Issued] = []

    class FixedCA(MeshCA):
        def issue(self, workload: str, **kwargs: object) -> Issued:  # type: ignore[override]
            return Issued(workload, b"k", b"c", b"ca", now[0] + kwargs["ttl"])  # type: ignore[operator]

    real = MeshCA.create(tmp_path)
    identity = EnvoyIdentity(
        FixedCA(real.cert, real.key), published.append, ttl=datetime.timedelta(hours=2), clock=lambda: now[0]
    )
    identity.rotate()
    assert published and identity.seconds_to_renewal() == 3600
    now[0] += datetime.timedelta(minutes=59)
    assert identity.seconds_to_renewal() == 60


@pytest.mark.parametrize("claimed_cluster", ["capsule-mesh-proxyless", "envoy-like"])
def test_secrets_go_to_envoy_alone_and_a_gateway_is_served_as_a_grpc_client(
    tmp_path: Path, claimed_cluster: str
) -> None:
    """Envoy's private key is on the ADS stream: a gateway (a proxyless client allowed on ADS)
    that asks for it, or claims to be an Envoy node, gets neither the key nor Envoy's resources."""
    from controlplane.ads import Stream
    from controlplane.cache import SnapshotCache
    from envoy.service.discovery.v3 import discovery_pb2

    snapshots = MeshSnapshots(listen=LISTEN, services=(AUTH,), tls=True)
    snapshots.use_envoy_identity(**secrets(MeshCA.create(tmp_path)))
    envoy, proxyless = snapshots.build({})
    cache = SnapshotCache()
    cache.set_snapshot(proxyless, kind=PROXYLESS)
    cache.set_snapshot(envoy)

    def ask(identity: str, stream_id: int, type_url: str, names: tuple[str, ...] = ()) -> list[object]:
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names))
        request.node.id = f"node-{identity}"
        request.node.cluster = claimed_cluster if identity == "gateway" else "capsule-mesh"
        return list(Stream(cache, stream_id, identity=identity).on_request(request))

    [answer] = ask("envoy", 1, rs.SECRET, ("envoy-identity",))
    assert len(answer.resources) == 1  # type: ignore[attr-defined]
    assert ask("gateway", 2, rs.SECRET, ("envoy-identity",)) == []
    [listeners] = ask("gateway", 3, rs.LISTENER)
    assert all(b"grpc_ingress" not in r.value for r in listeners.resources)  # type: ignore[attr-defined]
