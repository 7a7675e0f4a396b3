"""Development keys in .run/keys/, each created when missing: one Ed25519 JWT pair, the
page-token keys, the mesh CA (mesh-ca/: ca.pem, ca-key.pem) and the operator's certificate
(operator/: identity.pem, ca.pem — what grpcurl presents, renewed when half its life is gone).

    python -m launcher.keys [DIRECTORY]      # compose uses this to fill its key volume

Auth signs access tokens with the private key; every service verifies them with the public key
(SPEC §3). Every service signs and verifies its page tokens with the page-token keys (the text
of PAGE_TOKEN_KEYS, "kid:secret", services/common/pagination.py). The mesh CA signs every
workload's certificate (mesh/pki.py; the launcher issues them per stack). These are development
keys: production supplies its own.
"""

from __future__ import annotations

import datetime
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher.bootstrap import REPO
from mesh.pki import CA_NAME, IDENTITY_NAME, OPERATOR, MeshCA, Wanted, renewal_reason

DEFAULT_DIR = REPO / ".run" / "keys"
PRIVATE_NAME = "jwt-private.pem"
PUBLIC_NAME = "jwt-public.pem"
PAGE_TOKENS_NAME = "page-token-keys"
MESH_CA_NAME = "mesh-ca"
OPERATOR_NAME = "operator"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    # The value of PAGE_TOKEN_KEYS ("kid:secret,..."), one line.
    page_tokens: Path
    # The mesh CA's directory (mesh/pki.py) and the operator's certificate directory.
    mesh_ca: Path
    operator: Path

    def ca(self) -> MeshCA:
        return MeshCA.load(self.mesh_ca)

    def page_token_keys(self) -> str:
        return self.page_tokens.read_text().strip()


def ensure_dev_keys(directory: Path = DEFAULT_DIR) -> KeyPair:
    """Return the keys in `directory`, generating the JWT pair if either half is missing and the
    page-token keys if missing."""
    pair = KeyPair(
        directory / PRIVATE_NAME,
        directory / PUBLIC_NAME,
        directory / PAGE_TOKENS_NAME,
        directory / MESH_CA_NAME,
        directory / OPERATOR_NAME,
    )
    _ensure_page_token_keys(pair.page_tokens)
    ensure_operator(MeshCA.ensure(pair.mesh_ca), pair.operator)
    if pair.private.exists() and pair.public.exists():
        return pair
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Written to a temporary name and renamed: a concurrent reader never sees half a key.
    # The private key is created 0600 (only its owner reads it).
    tmp_private = pair.private.with_suffix(".tmp")
    fd = os.open(tmp_private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    tmp_public = pair.public.with_suffix(".tmp")
    tmp_public.write_bytes(public_pem)
    tmp_private.replace(pair.private)
    tmp_public.replace(pair.public)
    print(f"[setup] generated an Ed25519 JWT key pair in {directory}", file=sys.stderr)
    return pair


def ensure_operator(ca: MeshCA, directory: Path) -> bool:
    """The operator's certificate, issued again when mesh/pki.py's renewer would (missing, half
    its 24 h gone, another CA, ...); whether it was."""
    wanted = Wanted(OPERATOR)
    identity, trusted = (
        path.read_bytes() if path.exists() else None for path in (directory / IDENTITY_NAME, directory / CA_NAME)
    )
    if renewal_reason(ca, wanted, identity, trusted, datetime.datetime.now(datetime.UTC)) is None:
        return False
    ca.issue(OPERATOR).write(directory)
    return True


def _ensure_page_token_keys(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    kid, secret = f"dev-{secrets.token_hex(4)}", secrets.token_urlsafe(32)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{kid}:{secret}\n")
    # A hard link never replaces: when several processes (test workers) race, the first key
    # written is the one all of them read, so the instances of one stack share it.
    try:
        os.link(tmp, path)
        print(f"[setup] generated a page-token key ({kid}) in {path}", file=sys.stderr)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    keys = ensure_dev_keys(target)
    print(f"{keys.private}\n{keys.public}\n{keys.page_tokens}")
