"""Development JWT signing keys: one Ed25519 pair in .run/keys/, created when missing.

    python -m launcher.keys [DIRECTORY]      # compose uses this to fill its key volume

Auth signs access tokens with the private key; every service verifies them with the public key
(SPEC §3). These are development keys: production mounts its own.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher.bootstrap import REPO

DEFAULT_DIR = REPO / ".run" / "keys"
PRIVATE_NAME = "jwt-private.pem"
PUBLIC_NAME = "jwt-public.pem"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def ensure_dev_keys(directory: Path = DEFAULT_DIR) -> KeyPair:
    """Return the key pair in `directory`, generating it if either half is missing."""
    pair = KeyPair(directory / PRIVATE_NAME, directory / PUBLIC_NAME)
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


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    keys = ensure_dev_keys(target)
    print(f"{keys.private}\n{keys.public}")
