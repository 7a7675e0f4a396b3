"""Generates the Python stubs of every proto under protos/ into gen/ (one command, idempotent).

    python -m launcher.protos

Output: gen/capsule/**/*_pb2.py, *_pb2_grpc.py and *.pyi. gen/ is not committed; the launcher's
set-up runs this whenever a .proto is newer than the last generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
GEN_ROOT = REPO / "gen"
STAMP = GEN_ROOT / ".generated"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def is_stale() -> bool:
    if not STAMP.exists():
        return True
    generated_at = STAMP.stat().st_mtime
    return any(p.stat().st_mtime > generated_at for p in proto_files())


def import_roots() -> list[Path]:
    """Where the protos' imports of google/api/*.proto and google/protobuf/*.proto are found: the
    pinned wheels of the venv (no download, no Buf Schema Registry)."""
    # Imported here: this module is also read by the stdlib-only bootstrap before the venv exists.
    import google.api  # googleapis-common-protos ships google/api/*.proto next to its modules
    from grpc_tools import protoc

    googleapis_root = Path(google.api.__path__[0]).parent.parent
    well_known_root = Path(protoc.__file__).parent / "_proto"
    return [googleapis_root, well_known_root]


def grpcurl_source(proto_file: str) -> list[str]:
    """grpcurl's arguments to read a service from `proto_file` (relative to protos/) instead of
    reflection, with the roots of its imports."""
    roots = [PROTO_ROOT, *import_roots()]
    return [*(arg for root in roots for arg in ("-import-path", str(root))), "-proto", proto_file]


def generate() -> None:
    from grpc_tools import protoc

    GEN_ROOT.mkdir(exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        *(f"-I{root}" for root in import_roots()),
        f"--python_out={GEN_ROOT}",
        f"--pyi_out={GEN_ROOT}",
        f"--grpc_python_out={GEN_ROOT}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    STAMP.touch()


def main() -> None:
    generate()
    print(f"generated stubs for {len(proto_files())} proto files into {GEN_ROOT}", file=sys.stderr)


if __name__ == "__main__":
    main()
