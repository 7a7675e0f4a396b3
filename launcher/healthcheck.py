"""Container health checks (compose.yaml), with the same probes the launcher uses.

    python -m launcher.healthcheck grpc HOST:PORT SERVICE    # grpc.health.v1 Check == SERVING
    python -m launcher.healthcheck http URL                  # 2xx

Exit code 0 when healthy, 1 otherwise.
"""

from __future__ import annotations

import sys

from launcher.process import GrpcHealthProbe, http_ok


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "grpc":
        probe = GrpcHealthProbe(argv[1], argv[2], timeout=2.0)
        try:
            return 0 if probe() else 1
        finally:
            probe.close()
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1], timeout=2.0) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
