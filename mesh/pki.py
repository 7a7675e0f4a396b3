"""The mesh's certificates (SPEC §12): one mesh CA, short-lived workload certificates.

    ca = MeshCA.create(directory)            # set-up, once: ca.pem + ca-key.pem (0600)
    ca = MeshCA.load(directory)
    issued = ca.issue("auth")                # 24 h, spiffe://capsule-mesh/auth
    issued.write(workload_dir)               # identity.pem (key + certificate) and ca.pem

    python -m mesh.pki issue NAME DIR [--ca DIR] [--ttl SECONDS] [--host H ...]

A workload certificate names its workload twice: the URI SAN `spiffe://capsule-mesh/<name>` (the
identity every authorization decision reads: Envoy's RBAC, the services, the control plane) and the
DNS SAN `<name>.capsule-mesh` (what a gRPC client checks when it dials that workload: it sets the
TLS server name to it). Extra `hosts` (DNS names or IP addresses) are added only where a client
cannot choose the server name it checks — gRPC's xDS client dialling the control plane by address.

The key and the certificate live in one file, replaced by a rename, so a reader never pairs a new
certificate with an old key (credentials.py reloads on change). Keys are ECDSA P-256: the cheapest
handshake BoringSSL (grpcio, Envoy) offers at this security level.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "capsule-mesh"
SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
CA_NAME, CA_KEY_NAME = "ca.pem", "ca-key.pem"
IDENTITY_NAME = "identity.pem"  # the workload's private key, then its certificate
# SPEC §12: workload certificates live at most 24 hours; they are renewed at half their life.
DEFAULT_TTL = datetime.timedelta(hours=24)
MAX_TTL = datetime.timedelta(hours=24)
CA_TTL = datetime.timedelta(days=5 * 365)
# Clocks of the machines of one mesh may differ a little: a new certificate is valid from just before.
BACKDATE = datetime.timedelta(minutes=5)

# The workloads that are not services of the topology.
ENVOY, GATEWAY, CONTROL_PLANE, OPERATOR = "envoy", "gateway", "control-plane", "operator"


def spiffe_id(workload: str) -> str:
    return SPIFFE_PREFIX + workload


def workload_of(spiffe: str) -> str | None:
    """`auth` for spiffe://capsule-mesh/auth; None for anything outside the trust domain."""
    if spiffe.startswith(SPIFFE_PREFIX) and "/" not in spiffe[len(SPIFFE_PREFIX) :]:
        return spiffe[len(SPIFFE_PREFIX) :] or None
    return None


def server_name(workload: str) -> str:
    """The DNS SAN of a workload: the TLS server name a client dialling it checks."""
    return f"{workload}.{TRUST_DOMAIN}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


@dataclass(frozen=True)
class Issued:
    """One workload certificate with its key, and the CA that signed it."""

    workload: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    not_after: datetime.datetime

    @property
    def identity_pem(self) -> bytes:
        return self.key_pem + self.cert_pem

    def write(self, directory: Path) -> None:
        """identity.pem (0600) and ca.pem in `directory`, each replaced in one rename; the CA first,
        so a reader that sees the new identity already trusts its issuer."""
        directory.mkdir(parents=True, exist_ok=True)
        ca_path = directory / CA_NAME
        if not ca_path.exists() or ca_path.read_bytes() != self.ca_pem:
            _write_atomically(ca_path, self.ca_pem)
        _write_atomically(directory / IDENTITY_NAME, self.identity_pem, 0o600)


class MeshCA:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, directory: Path) -> MeshCA:
        """A new CA in `directory` (ca.pem, ca-key.pem 0600). The key is written before the
        certificate: `ensure` treats a directory with a certificate as complete."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{TRUST_DOMAIN} mesh CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(directory / CA_KEY_NAME, _pem_key(key), 0o600)
        _write_atomically(directory / CA_NAME, cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> MeshCA:
        cert = x509.load_pem_x509_certificate((directory / CA_NAME).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY_NAME).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / CA_KEY_NAME}: not an EC private key")
        return cls(cert, key)

    @classmethod
    def ensure(cls, directory: Path) -> MeshCA:
        """The CA in `directory`, created when missing (concurrent creators: the last rename wins
        for each file, so a half-written pair is possible only between two racing set-ups; the
        launcher creates it once, before starting anything)."""
        if (directory / CA_NAME).exists() and (directory / CA_KEY_NAME).exists():
            return cls.load(directory)
        ca = cls.create(directory)
        print(f"[setup] generated the mesh CA in {directory}", file=sys.stderr)
        return ca

    def issue(
        self,
        workload: str,
        *,
        ttl: datetime.timedelta = DEFAULT_TTL,
        hosts: tuple[str, ...] = (),
    ) -> Issued:
        """A certificate for `workload` (server and client use), valid `ttl` (≤ 24 h)."""
        if not workload or "/" in workload:
            raise ValueError(f"not a workload name: {workload!r}")
        if ttl > MAX_TTL or ttl <= datetime.timedelta(0):
            raise ValueError(f"a workload certificate lives between 0 and {MAX_TTL} (SPEC §12), not {ttl}")
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(spiffe_id(workload)),
            x509.DNSName(server_name(workload)),
        ]
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = _now()
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, workload)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(
            workload=workload,
            key_pem=_pem_key(key),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            ca_pem=self.cert_pem,
            not_after=not_after,
        )


def certificate_not_after(identity_pem: bytes) -> datetime.datetime:
    """When the certificate in an identity file (or any PEM holding one) expires."""
    return x509.load_pem_x509_certificate(identity_pem).not_valid_after_utc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh.pki", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ca_cmd = sub.add_parser("ca", help="create the mesh CA in DIR when missing")
    ca_cmd.add_argument("directory", type=Path)
    issue = sub.add_parser("issue", help="write NAME's identity.pem and ca.pem into DIR")
    issue.add_argument("name")
    issue.add_argument("directory", type=Path)
    issue.add_argument("--ca", type=Path, default=Path(os.environ.get("MESH_CA_DIR", ".run/keys/mesh-ca")))
    issue.add_argument("--ttl", type=float, default=DEFAULT_TTL.total_seconds(), help="seconds (≤ 86400)")
    issue.add_argument("--host", action="append", default=[], help="an extra DNS name or IP address SAN")
    args = parser.parse_args(argv)
    if args.command == "ca":
        MeshCA.ensure(args.directory)
        return 0
    ca = MeshCA.load(args.ca)
    ca.issue(args.name, ttl=datetime.timedelta(seconds=args.ttl), hosts=tuple(args.host)).write(args.directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
