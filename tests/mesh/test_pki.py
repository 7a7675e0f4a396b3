"""mesh/pki.py without sockets: what a workload certificate names and how long it lives, and the
renewer of deployments without the launcher (`python -m mesh.pki renew`): when it issues again,
what its pass leaves for the health check, and that it stops on SIGTERM."""

from __future__ import annotations

import datetime
import ipaddress
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from launcher.bootstrap import REPO
from mesh.credentials import MeshTLS
from mesh.pki import (
    CA_NAME,
    IDENTITY_NAME,
    MAX_TTL,
    RENEWED_NAME,
    MeshCA,
    Wanted,
    identity_certificate,
    main,
    ready_problems,
    renew_due,
    renew_forever,
    renewal_reason,
)

HOUR = datetime.timedelta(hours=1)
CONTROL_PLANE = Wanted("control-plane", ("control-plane", "localhost", "127.0.0.1"))
WANTED = [Wanted("auth"), Wanted("envoy"), CONTROL_PLANE]


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture
def ca(tmp_path: Path) -> MeshCA:
    return MeshCA.create(tmp_path / "ca")


def sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def files(directory: Path) -> tuple[bytes | None, bytes | None]:
    identity, trusted = directory / IDENTITY_NAME, directory / CA_NAME
    return (
        identity.read_bytes() if identity.exists() else None,
        trusted.read_bytes() if trusted.exists() else None,
    )


# --- issuing -------------------------------------------------------------------------------------


def test_a_workload_certificate_names_its_identity_its_server_name_and_its_extra_hosts(
    ca: MeshCA, tmp_path: Path
) -> None:
    ca.issue("control-plane", hosts=("control-plane", "127.0.0.1")).write(tmp_path / "cp")
    cert = identity_certificate((tmp_path / "cp" / IDENTITY_NAME).read_bytes())
    assert sans(cert) == [
        x509.UniformResourceIdentifier("spiffe://capsule-mesh/control-plane"),
        x509.DNSName("control-plane.capsule-mesh"),
        x509.DNSName("control-plane"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    cert.verify_directly_issued_by(ca.cert)
    assert (tmp_path / "cp" / CA_NAME).read_bytes() == ca.cert_pem
    assert (tmp_path / "cp" / IDENTITY_NAME).stat().st_mode & 0o777 == 0o600


def test_a_workload_certificate_lives_at_most_24_hours(ca: MeshCA) -> None:
    issued = ca.issue("auth")
    assert abs(issued.not_after - (now() + MAX_TTL)) < datetime.timedelta(minutes=1)
    assert identity_certificate(issued.identity_pem).not_valid_after_utc == issued.not_after
    assert abs(ca.issue("auth", ttl=HOUR).not_after - (now() + HOUR)) < datetime.timedelta(minutes=1)
    for ttl in (MAX_TTL + datetime.timedelta(seconds=1), datetime.timedelta(0)):
        with pytest.raises(ValueError, match="lives between"):
            ca.issue("auth", ttl=ttl)
    with pytest.raises(ValueError, match="not a workload name"):
        ca.issue("a/b")


def test_an_identity_file_whose_key_and_certificate_differ_is_refused(ca: MeshCA) -> None:
    one, other = ca.issue("auth"), ca.issue("auth")
    with pytest.raises(ValueError, match="do not pair"):
        identity_certificate(one.key_pem + other.cert_pem)


# --- the renewal decision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth", Wanted("auth")),
        ("control-plane=control-plane,localhost", Wanted("control-plane", ("control-plane", "localhost"))),
        ("control-plane=10.0.0.2", Wanted("control-plane", ("10.0.0.2",))),
    ],
)
def test_a_wanted_workload_is_a_name_with_optional_hosts(text: str, expected: Wanted) -> None:
    assert Wanted.parse(text) == expected


@pytest.mark.parametrize("text", ["", "Auth", "a/b", "a.b", "-auth", "auth=", ".renewed"])
def test_a_wanted_workload_is_one_dns_label(text: str) -> None:
    with pytest.raises(ValueError):
        Wanted.parse(text)


def test_a_fresh_certificate_is_kept_until_half_its_life_is_gone(ca: MeshCA) -> None:
    issued = ca.issue("auth")
    cert = identity_certificate(issued.identity_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    half = start + (end - start) / 2
    decide = renewal_reason
    assert decide(ca, Wanted("auth"), issued.identity_pem, issued.ca_pem, now()) is None
    assert decide(ca, Wanted("auth"), issued.identity_pem, issued.ca_pem, half - HOUR / 60) is None
    assert decide(ca, Wanted("auth"), issued.identity_pem, issued.ca_pem, half) == "half its life gone"
    assert decide(ca, Wanted("auth"), issued.identity_pem, issued.ca_pem, end + HOUR) == "half its life gone"


def test_a_missing_mismatched_or_misnamed_certificate_is_issued_again(ca: MeshCA) -> None:
    issued = ca.issue("auth")
    wanted = Wanted("auth")
    at = now()
    assert renewal_reason(ca, wanted, None, issued.ca_pem, at) == "missing"
    assert renewal_reason(ca, wanted, issued.identity_pem, None, at) == "missing"
    torn = issued.key_pem + ca.issue("auth").cert_pem
    assert (renewal_reason(ca, wanted, torn, issued.ca_pem, at) or "").startswith("unreadable")
    assert (renewal_reason(ca, wanted, b"garbage", issued.ca_pem, at) or "").startswith("unreadable")
    assert renewal_reason(ca, Wanted("recipients"), issued.identity_pem, issued.ca_pem, at) == "other names"
    assert renewal_reason(ca, Wanted("auth", ("localhost",)), issued.identity_pem, issued.ca_pem, at) == "other names"


def test_a_certificate_of_another_ca_is_issued_again(ca: MeshCA, tmp_path: Path) -> None:
    other = MeshCA.create(tmp_path / "other-ca").issue("auth")
    at = now()
    # Its own CA beside it, or ours beside it: either way not ours.
    assert renewal_reason(ca, Wanted("auth"), other.identity_pem, other.ca_pem, at) == "another CA"
    assert renewal_reason(ca, Wanted("auth"), other.identity_pem, ca.cert_pem, at) == "another CA"
    # Ours, beside another CA's ca.pem: the readers would not trust their peers.
    assert renewal_reason(ca, Wanted("auth"), ca.issue("auth").identity_pem, other.ca_pem, at) == "another CA"


# --- a pass ---------------------------------------------------------------------------------------


def test_a_pass_issues_what_is_due_and_names_every_workload(ca: MeshCA, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert renew_due(ca, out, WANTED) == [(w.workload, "missing") for w in WANTED]
    assert (out / RENEWED_NAME).read_text().split() == ["auth", "envoy", "control-plane"]
    first = {w.workload: files(out / w.workload) for w in WANTED}
    cp = identity_certificate((out / "control-plane" / IDENTITY_NAME).read_bytes())
    assert x509.DNSName("control-plane") in sans(cp) and x509.DNSName("localhost") in sans(cp)

    assert renew_due(ca, out, WANTED) == []
    assert {w.workload: files(out / w.workload) for w in WANTED} == first

    (out / "envoy" / IDENTITY_NAME).unlink()
    assert renew_due(ca, out, WANTED) == [("envoy", "missing")]
    assert renew_due(ca, out, WANTED, now=now() + 13 * HOUR) == [(w.workload, "half its life gone") for w in WANTED]


def test_a_new_ca_has_every_certificate_issued_again(ca: MeshCA, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    renew_due(ca, out, WANTED)
    new_ca = MeshCA.create(tmp_path / "new-ca")
    assert renew_due(new_ca, out, WANTED) == [(w.workload, "another CA") for w in WANTED]
    for w in WANTED:
        identity, trusted = files(out / w.workload)
        assert trusted == new_ca.cert_pem and identity is not None
        identity_certificate(identity).verify_directly_issued_by(new_ca.cert)
    assert ready_problems(out) == []


def test_the_one_file_identity_never_shows_a_key_with_another_certificate(ca: MeshCA, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    renew_due(ca, out, [Wanted("auth")])
    identity = out / "auth" / IDENTITY_NAME
    stop = threading.Event()
    reads: list[int] = []
    torn: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                identity_certificate(identity.read_bytes())
            except ValueError as exc:
                torn.append(str(exc))
            reads.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for hours in range(13, 13 + 40):
            assert renew_due(ca, out, [Wanted("auth")], now=now() + hours * HOUR) == [("auth", "half its life gone")]
    finally:
        stop.set()
        reader.join()
    assert torn == [] and len(reads) > 40
    MeshTLS(out / "auth").current()  # what the workloads load: key and certificate pair up


# --- what the health check reads ------------------------------------------------------------------


def test_ready_once_a_pass_finished_and_while_every_certificate_is_valid(ca: MeshCA, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert ready_problems(out) == [f"{out / RENEWED_NAME}: no renewal pass finished yet"]
    renew_due(ca, out, WANTED)
    assert ready_problems(out) == []
    assert [p.split(":")[0] for p in ready_problems(out, now=now() + 25 * HOUR)] == ["auth", "envoy", "control-plane"]
    (out / "envoy" / IDENTITY_NAME).unlink()
    assert [p.split(":")[0] for p in ready_problems(out)] == ["envoy"]
    MeshCA.create(tmp_path / "other").issue("envoy").write(out / "envoy")
    (out / "envoy" / CA_NAME).write_bytes(ca.cert_pem)
    assert ready_problems(out) == [f"envoy: not issued by the CA in {out / 'envoy' / CA_NAME}"]


# --- the command ------------------------------------------------------------------------------------


def test_later_failed_passes_are_reported_and_retried_but_the_first_one_is_raised(
    ca: MeshCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loads = iter([ca, None, ca])  # None: the second pass finds no CA

    def load() -> MeshCA:
        item = next(loads)
        if item is None:
            raise OSError("no CA")
        return item

    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) == 3

    renew_forever(load, tmp_path / "certs", WANTED, ttl=MAX_TTL, every=7.0, wait=wait)
    assert waits == [7.0, 7.0, 7.0]
    assert "renewal pass failed, next in 7 s: no CA" in capsys.readouterr().err

    def broken() -> MeshCA:
        raise OSError("no CA")

    with pytest.raises(OSError, match="no CA"):
        renew_forever(broken, tmp_path / "other", WANTED, ttl=MAX_TTL, every=7.0, wait=wait)


def test_renew_once_from_the_command_line(ca: MeshCA, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    args = ["renew", "--once", "--ca", str(tmp_path / "ca"), "--out", str(out)]
    assert main([*args, "--workload", "auth", "--workload", "control-plane=control-plane,localhost"]) == 0
    assert (out / RENEWED_NAME).read_text().split() == ["auth", "control-plane"]
    assert ready_problems(out) == []
    for bad in (
        ["--workload", "auth", "--workload", "auth"],
        ["--workload", "auth", "--ttl", "86401"],
        ["--workload", "auth", "--every", "0"],
        ["--workload", "Auth"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*args, *bad])
        assert exit_.value.code == 2


def test_the_renewer_runs_until_sigterm(ca: MeshCA, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    command = [sys.executable, "-m", "mesh.pki", "renew", "--ca", str(tmp_path / "ca"), "--out", str(out)]
    renewer = subprocess.Popen(
        [*command, "--workload", "auth", "--every", "0.2"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while ready_problems(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready_problems(out) == []
        (out / "auth" / IDENTITY_NAME).unlink()  # the next pass puts it back
        while not (out / "auth" / IDENTITY_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert renewer.poll() is None
        renewer.send_signal(signal.SIGTERM)
        _, err = renewer.communicate(timeout=10)
    finally:
        if renewer.poll() is None:
            renewer.kill()
            renewer.wait()
    assert renewer.returncode == 0, err
    assert err.count("issued auth's certificate") == 2, err
