"""The mesh's certificates (SPEC §12): one mesh CA, short-lived workload certificates.

    ca = MeshCA.create(directory)            # set-up, once: ca.pem + ca-key.pem (0600)
    ca = MeshCA.load(directory)
    issued = ca.issue("auth")                # 24 h, spiffe://capsule-mesh/auth
    issued.write(workload_dir)               # identity.pem (key + certificate) and ca.pem

    python -m mesh.pki issue NAME DIR [--ca DIR] [--ttl SECONDS] [--host H ...]
    python -m mesh.pki renew --out DIR --workload NAME[=HOST,...] ... [--ca DIR] [--every S] [--once]

A workload certificate names its workload twice: the URI SAN `spiffe://capsule-mesh/<name>` (the
identity every authorization decision reads: Envoy's RBAC, the services, the control plane) and the
DNS SAN `<name>.capsule-mesh` (what a gRPC client checks when it dials that workload: it sets the
TLS server name to it). Extra `hosts` (DNS names or IP addresses) are added only where a client
cannot choose the server name it checks — gRPC's xDS client dialling the control plane by address.

The key and the certificate live in one file, replaced by a rename, so a reader never pairs a new
certificate with an old key (credentials.py reloads on change). Keys are ECDSA P-256: the cheapest
handshake BoringSSL (grpcio, Envoy) offers at this security level.

Where no launcher issues them (compose's `certs` container), `renew` keeps the certificates of the
workloads it names in OUT/<workload>: issued again when missing, past half their life, signed by
another CA or naming other hosts, looked at every `--every` seconds until SIGTERM. After each
complete pass OUT/.renewed names those workloads; `ready_problems(OUT)` (the container's health
check) says whether each of them holds a usable certificate now.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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


def subject_names(workload: str, hosts: tuple[str, ...] = ()) -> list[x509.GeneralName]:
    """The SANs of `workload`'s certificate: its SPIFFE id, its server name, then `hosts`."""
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(workload)),
        x509.DNSName(server_name(workload)),
    ]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


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
        names = subject_names(workload, hosts)
        now = _now()
        # Whole seconds: what the certificate can hold, so `Issued.not_after` is exactly its expiry.
        not_after = min(now + ttl, self.cert.not_valid_after_utc).replace(microsecond=0)
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


# --- the renewer: deployments without the launcher (compose's `certs` container) -------------------

# Written into OUT after every complete pass: the workloads the renewer keeps, one a line. What the
# container's health check reads (`ready_problems`); a dot-name, which no workload name can take.
RENEWED_NAME = ".renewed"
DEFAULT_EVERY_SECONDS = 300.0
# A workload name is one DNS label: it becomes the server name `<name>.capsule-mesh`.
_WORKLOAD_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Wanted:
    """A workload whose certificate the renewer keeps, and the extra SANs it needs."""

    workload: str
    hosts: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Wanted:
        """`NAME`, or `NAME=host1,host2` for extra DNS names or IP addresses."""
        name, equals, rest = text.partition("=")
        if not _WORKLOAD_NAME.match(name):
            raise ValueError(f"not a workload name: {name!r} (lower-case letters, digits and '-')")
        hosts = tuple(h.strip() for h in rest.split(",") if h.strip())
        if equals and not hosts:
            raise ValueError(f"{text!r}: no host after '='")
        return cls(name, hosts)


def identity_certificate(identity_pem: bytes) -> x509.Certificate:
    """The certificate of an identity file, checked to pair with the key in front of it
    (ValueError otherwise)."""
    key = serialization.load_pem_private_key(identity_pem, password=None)
    cert = x509.load_pem_x509_certificate(identity_pem)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise ValueError("the key and the certificate do not pair")
    return cert


def split_identity(identity_pem: bytes) -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM) of an identity file, checked to pair (ValueError
    otherwise): what a TLS library takes as two arguments."""
    identity_certificate(identity_pem)
    key = serialization.load_pem_private_key(identity_pem, password=None)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(identity_pem))
    return key_pem, chain


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def renewal_reason(
    ca: MeshCA, wanted: Wanted, identity_pem: bytes | None, trusted_pem: bytes | None, now: datetime.datetime
) -> str | None:
    """Why a workload's directory (its identity.pem and ca.pem, None when absent) needs a new
    certificate from `ca` at `now`; None while the one there is good."""
    if identity_pem is None or trusted_pem is None:
        return "missing"
    try:
        cert = identity_certificate(identity_pem)
    except ValueError as exc:
        return f"unreadable: {exc}"
    if trusted_pem != ca.cert_pem or not _issued_by(cert, ca.cert):
        return "another CA"
    try:
        names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = set()
    if names != set(subject_names(wanted.workload, wanted.hosts)):
        return "other names"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now >= start + (end - start) / 2:
        return "half its life gone"
    return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def renew_due(
    ca: MeshCA,
    out: Path,
    wanted: Sequence[Wanted],
    *,
    ttl: datetime.timedelta = DEFAULT_TTL,
    now: datetime.datetime | None = None,
) -> list[tuple[str, str]]:
    """One pass: every wanted workload whose certificate in OUT/<workload> needs it (see
    `renewal_reason`) gets a new one; then OUT/.renewed names them all. The (workload, reason) of
    those issued."""
    now = now or _now()
    issued = []
    for item in wanted:
        directory = out / item.workload
        reason = renewal_reason(ca, item, _read(directory / IDENTITY_NAME), _read(directory / CA_NAME), now)
        if reason is not None:
            ca.issue(item.workload, ttl=ttl, hosts=item.hosts).write(directory)
            issued.append((item.workload, reason))
    _write_atomically(out / RENEWED_NAME, "".join(f"{item.workload}\n" for item in wanted).encode())
    return issued


def ready_problems(out: Path, now: datetime.datetime | None = None) -> list[str]:
    """What keeps the renewer's certificates in `out` from being usable now (empty: ready): it has
    not finished a pass, or a workload it names lacks an identity whose key and certificate pair,
    valid now, issued by the CA of the ca.pem beside it."""
    now = now or _now()
    listed = _read(out / RENEWED_NAME)
    if listed is None:
        return [f"{out / RENEWED_NAME}: no renewal pass finished yet"]
    problems = []
    for workload in listed.decode().split():
        directory = out / workload
        try:
            cert = identity_certificate((directory / IDENTITY_NAME).read_bytes())
            ca_cert = x509.load_pem_x509_certificate((directory / CA_NAME).read_bytes())
        except (OSError, ValueError) as exc:
            problems.append(f"{workload}: {exc}")
            continue
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            problems.append(f"{workload}: not valid now (until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)")
        elif not _issued_by(cert, ca_cert):
            problems.append(f"{workload}: not issued by the CA in {directory / CA_NAME}")
    return problems


def renew_forever(
    load_ca: Callable[[], MeshCA],
    out: Path,
    wanted: Sequence[Wanted],
    *,
    ttl: datetime.timedelta,
    every: float,
    wait: Callable[[float], bool],
) -> None:
    """A pass now, then one after each `wait(every)` until it answers True (stop). The CA is loaded again for
    each pass (a new CA in its directory: every certificate is issued again). The first pass's
    failure is raised (nothing could start on these certificates); a later one is reported and
    tried again at the next pass, while the certificates in place still have half their life."""
    first = True
    while True:
        try:
            for workload, reason in renew_due(load_ca(), out, wanted, ttl=ttl):
                print(f"[pki] issued {workload}'s certificate into {out / workload} ({reason})", file=sys.stderr)
        except (OSError, ValueError) as exc:
            if first:
                raise
            print(f"[pki] renewal pass failed, next in {every:g} s: {exc}", file=sys.stderr)
        first = False
        if wait(every):
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh.pki", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ca_cmd = sub.add_parser("ca", help="create the mesh CA in DIR when missing")
    ca_cmd.add_argument("directory", type=Path)
    default_ca = Path(os.environ.get("MESH_CA_DIR", ".run/keys/mesh-ca"))
    issue = sub.add_parser("issue", help="write NAME's identity.pem and ca.pem into DIR")
    issue.add_argument("name")
    issue.add_argument("directory", type=Path)
    issue.add_argument("--ca", type=Path, default=default_ca)
    issue.add_argument("--ttl", type=float, default=DEFAULT_TTL.total_seconds(), help="seconds (≤ 86400)")
    issue.add_argument("--host", action="append", default=[], help="an extra DNS name or IP address SAN")
    renew = sub.add_parser(
        "renew",
        help="keep every --workload's certificate in OUT/<workload>, issued again past half its life",
        description="Issue each workload's certificate into OUT/<workload> when missing, past half its "
        "life, signed by another CA or naming other hosts; then look again every --every seconds until "
        "SIGTERM (--once: one pass). OUT/.renewed names the workloads after each pass.",
    )
    renew.add_argument("--ca", type=Path, default=default_ca)
    renew.add_argument("--out", type=Path, required=True)
    renew.add_argument(
        "--workload",
        dest="wanted",
        type=Wanted.parse,
        action="append",
        required=True,
        metavar="NAME[=HOST,...]",
        help="a workload, with extra DNS name or IP address SANs after '='",
    )
    renew.add_argument("--ttl", type=float, default=DEFAULT_TTL.total_seconds(), help="seconds (≤ 86400)")
    renew.add_argument("--every", type=float, default=DEFAULT_EVERY_SECONDS, help="seconds between passes")
    renew.add_argument("--once", action="store_true", help="one pass, then exit")
    args = parser.parse_args(argv)
    if args.command == "ca":
        MeshCA.ensure(args.directory)
        return 0
    ttl = datetime.timedelta(seconds=args.ttl)
    if args.command == "issue":
        MeshCA.load(args.ca).issue(args.name, ttl=ttl, hosts=tuple(args.host)).write(args.directory)
        return 0
    if not datetime.timedelta(0) < ttl <= MAX_TTL or args.every <= 0:
        parser.error(f"--ttl must lie in (0, {MAX_TTL.total_seconds():g}] and --every be positive")
    names = [item.workload for item in args.wanted]
    if len(set(names)) != len(names):
        parser.error(f"a workload named twice: {names}")
    renew_forever(
        lambda: MeshCA.load(args.ca),
        args.out,
        args.wanted,
        ttl=ttl,
        every=args.every,
        wait=(lambda _: True) if args.once else _until_stopped(),
    )
    return 0


def _until_stopped() -> Callable[[float], bool]:
    """A wait that ends early, answering True, on SIGTERM or SIGINT. The signals are blocked and
    taken with sigtimedwait: one that arrives during a pass waits for the pass to finish, and no
    handler runs in the middle of a write."""
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    return lambda seconds: signal.sigtimedwait(stopping, seconds) is not None


if __name__ == "__main__":
    raise SystemExit(main())
