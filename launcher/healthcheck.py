"""Container health checks (compose.yaml), with the same probes the launcher uses.

    python -m launcher.healthcheck grpc HOST:PORT SERVICE PEER   # grpc.health.v1 Check == SERVING
    python -m launcher.healthcheck http URL                       # 2xx
    python -m launcher.healthcheck certs DIR                      # the mesh.pki renewer's certificates

`grpc` asks over mutual TLS as the identity in MESH_TLS_DIR (the container's own: health is open to
every mesh identity) and accepts the server only if its certificate names the workload PEER. Plain
text only with MESH_PLAINTEXT=1 (PEER is then ignored and may be left out); with neither set the
check fails, as the workload itself would refuse to start. `certs`: every workload of the renewer's
last complete pass (`python -m mesh.pki renew --out DIR`) holds a certificate valid now.

Exit code 0 when healthy, 1 otherwise, 2 for a wrong command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from launcher.process import GrpcHealthProbe, http_ok


def _grpc(address: str, service: str, peer: str) -> int:
    from mesh.credentials import MeshTLS, TLSSetupError

    try:
        tls = MeshTLS.from_env()
    except (TLSSetupError, OSError, ValueError) as exc:
        print(f"healthcheck: no mesh identity: {exc}", file=sys.stderr)
        return 1
    if tls is not None and not peer:
        print(
            "healthcheck: over mutual TLS (MESH_TLS_DIR) name the server's workload: grpc ADDRESS SERVICE PEER",
            file=sys.stderr,
        )
        return 2
    probe = GrpcHealthProbe(address, service, timeout=2.0, tls=tls, peer=peer)
    try:
        return 0 if probe() else 1
    finally:
        probe.close()


def _certs(directory: Path) -> int:
    from mesh.pki import ready_problems

    problems = ready_problems(directory)
    for problem in problems:
        print(f"healthcheck: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["grpc"] and len(argv) in (3, 4):
        return _grpc(argv[1], argv[2], argv[3] if len(argv) == 4 else "")
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1], timeout=2.0) else 1
    if len(argv) == 2 and argv[0] == "certs":
        return _certs(Path(argv[1]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
