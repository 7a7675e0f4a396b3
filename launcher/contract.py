"""The API contract as a product: protos/capsule checked against its last release.

    python -m launcher contract check                       lint + breaking + routes (what make test runs)
    python -m launcher contract release VERSION [--breaking]  cut api-vVERSION (README: API contract)

Installed clients cannot update in step with the backend, so what a release published stays
served. Three checks, on Buf images that grpc_tools compiles (the venv's googleapis and well-known
protos; buf never reaches the Buf Schema Registry):

- `buf lint` with protos/buf.yaml (STANDARD, its exceptions given their reasons there), on our
  files only;
- `buf breaking` against the protos of the last release, with protos/buf.yaml's rule set
  (WIRE_JSON): field names, numbers, types, JSON names;
- the HTTP routes: buf does not compare option values, so a changed `google.api.http` rule passes
  it; every route of the release (verb, path template, method, body mappings) must still be there.

The last release is the newest `## api-vX.Y.Z` heading of protos/CHANGELOG.md, the one place its
tag name lives, with the git tree of protos/capsule the tag holds. The protos of the release are
read from git (the tag; a clone without the tag but with that tree uses the tree, which is the same
content). A breaking change passes only once a new release is cut with `release --breaking`, which
wants a `### Breaking` part in the changelog's Unreleased section saying what broke and what
clients must do, and a new major version.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from launcher import protos
from launcher.bootstrap import REPO

CONTRACT_DIR = "protos/capsule"  # what a release freezes (a git tree); protos/ holds the rest
BUF_CONFIG = "protos/buf.yaml"
CHANGELOG = "protos/CHANGELOG.md"
TAG_PREFIX = "api-v"
# The image's file names of our own protos: buf reports on these only, never on google/*.
OUR_FILES = "capsule"

_RELEASE_HEADING = re.compile(r"^## (api-v(\d+)\.(\d+)\.(\d+)) — (\d{4}-\d{2}-\d{2})$", re.MULTILINE)
_RELEASE_TREE = re.compile(r"git tree `([0-9a-f]{40})`")
_UNRELEASED = "## Unreleased"


class ContractError(Exception):
    """The contract cannot be checked or released as asked; the message says what to do."""


@dataclass(frozen=True)
class Release:
    tag: str
    version: tuple[int, int, int]
    day: str
    tree: str  # git tree id of protos/capsule at the tag


@dataclass(frozen=True)
class Verdict:
    """One check's result: `output` is what to show when it failed (buf's own lines)."""

    name: str
    ok: bool
    output: str


@dataclass(frozen=True, order=True)
class Route:
    verb: str
    template: str
    rpc: str  # /capsule.auth.v1.AuthService/SignUp
    body: str
    response_body: str

    def __str__(self) -> str:
        extra = "".join(f" {k}={v!r}" for k, v in (("body", self.body), ("response_body", self.response_body)) if v)
        return f"{self.verb} {self.template} → {self.rpc}{extra}"


# --- images and buf ---------------------------------------------------------------------------------


def buf_binary() -> str:
    path = Path(sys.executable).parent / "buf"  # the buf-bin wheel puts it next to the venv's python
    if not path.exists():
        raise ContractError(f"{path} is missing: buf-bin is pinned in pyproject.toml; run `make setup`")
    return str(path)


def build_image(proto_root: Path, out: Path) -> Path:
    """Compile every .proto under proto_root into a FileDescriptorSet that buf reads as an image:
    imports included (buf resolves nothing itself), source info kept (lint's comment ignores and
    line numbers)."""
    from grpc_tools import protoc

    files = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    argv = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        *(f"-I{root}" for root in protos.import_roots()),
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *files,
    ]
    # In process (a subprocess costs more than the compiling); protoc prints its errors to stderr.
    if protoc.main(argv) != 0:
        raise ContractError(f"protoc could not compile {proto_root} (its errors are above)")
    return out


def _buf(args: Sequence[str], config: Path) -> subprocess.CompletedProcess[str]:
    # --path: our files only; the image also carries google/* (imports), which are not ours to lint.
    argv = [buf_binary(), *args, "--config", str(config), "--path", OUR_FILES]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def lint(image: Path, config: Path) -> Verdict:
    done = _buf(["lint", str(image)], config)
    return Verdict("buf lint", done.returncode == 0, (done.stdout + done.stderr).strip())


def breaking(image: Path, against: Path, config: Path) -> Verdict:
    done = _buf(["breaking", str(image), "--against", str(against)], config)
    return Verdict("buf breaking", done.returncode == 0, (done.stdout + done.stderr).strip())


# --- routes ---------------------------------------------------------------------------------------


def routes(image: Path) -> set[Route]:
    """Every `google.api.http` rule of our services in the image, read by the gateway's own code."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    from gateway.descriptors import http_bindings

    files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()  # not the default one: the release's protos are not gen/'s
    for file in files:
        pool.Add(file)
    services = [
        service
        for file in files
        if file.name.startswith(OUR_FILES + "/")
        for service in pool.FindFileByName(file.name).services_by_name.values()
    ]
    return {Route(b.verb, b.template, b.rpc.path, b.body, b.response_body) for b in http_bindings(services)}


def removed_routes(image: Path, against: Path) -> Verdict:
    gone = sorted(routes(against) - routes(image))
    lines = [f"route of the release no longer served: {route}" for route in gone]
    return Verdict("http routes", not gone, "\n".join(lines))


# --- releases -------------------------------------------------------------------------------------


def latest_release(repo: Path = REPO) -> Release | None:
    text = (repo / CHANGELOG).read_text()
    heading = _RELEASE_HEADING.search(text)
    if heading is None:
        return None
    entry = text[heading.end() :].split("\n## ", 1)[0]
    tree = _RELEASE_TREE.search(entry)
    if tree is None:
        raise ContractError(f"{CHANGELOG}: the entry of {heading[1]} names no git tree `<id>` of {CONTRACT_DIR}")
    version = (int(heading[2]), int(heading[3]), int(heading[4]))
    return Release(tag=heading[1], version=version, day=heading[5], tree=tree[1])


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False, timeout=60)


def _resolve(repo: Path, spec: str) -> str | None:
    """The object id `spec` names (`api-v1.0.0:protos/capsule`), or None when this clone lacks it."""
    done = _git(repo, "rev-parse", "--verify", "--quiet", spec)
    if done.returncode != 0:
        return None
    oid = done.stdout.decode().strip()
    return oid if _git(repo, "cat-file", "-e", oid).returncode == 0 else None


def release_protos(release: Release, dest: Path, repo: Path = REPO) -> Path:
    """Write the release's protos/capsule under dest/capsule (from git) and return dest."""
    tagged = _resolve(repo, f"refs/tags/{release.tag}:{CONTRACT_DIR}")
    if tagged is not None and tagged != release.tree:
        raise ContractError(
            f"tag {release.tag} holds {CONTRACT_DIR} as tree {tagged}, but {CHANGELOG} records {release.tree}: "
            "the tag was moved or the entry edited; a release is never changed after the fact"
        )
    if tagged is None:
        if _resolve(repo, release.tree) is None:
            raise ContractError(
                f"the release {release.tag} (the last one in {CHANGELOG}) is not in this clone: a shallow or "
                f"single-branch clone has no tags. Fetch it: git fetch origin tag {release.tag} --no-tags"
            )
        # Same content by its id; the tag is missing only from this clone (say so: it is worth fetching).
        print(f"[contract] tag {release.tag} not in this clone: using its tree {release.tree}", file=sys.stderr)
    archive = _git(repo, "archive", "--format=tar", release.tree)
    if archive.returncode != 0:
        raise ContractError(f"git archive {release.tree}: {archive.stderr.decode().strip()}")
    target = dest / OUR_FILES
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
        else:  # Python < 3.11.4 (Debian 12's 3.11.2): no filters; the archive is our own git's
            tar.extractall(target)
    return dest


def check(repo: Path = REPO) -> list[Verdict]:
    """Lint, then breaking and routes against the last release (none yet: lint only)."""
    from concurrent.futures import ThreadPoolExecutor

    config = repo / BUF_CONFIG
    with tempfile.TemporaryDirectory(prefix="contract-") as scratch, ThreadPoolExecutor(2) as pool:
        work = Path(scratch)
        image = build_image(repo / "protos", work / "current.binpb")
        linted = pool.submit(lint, image, config)  # the two buf runs side by side: two cores
        last = latest_release(repo)
        if last is None:
            return [linted.result()]
        against = build_image(release_protos(last, work / "release", repo), work / "release.binpb")
        broken = pool.submit(breaking, image, against, config)
        routes_verdict = removed_routes(image, against)
        return [linted.result(), broken.result(), routes_verdict]


def unreleased_notes(repo: Path = REPO) -> str:
    text = (repo / CHANGELOG).read_text()
    if _UNRELEASED not in text:
        raise ContractError(f"{CHANGELOG} has no '{_UNRELEASED}' section")
    return text.split(_UNRELEASED, 1)[1].split("\n## ", 1)[0].strip()


def cut_release(version: str, *, breaking_change: bool, repo: Path = REPO, today: date | None = None) -> Release:
    """Move the baseline: the Unreleased notes become the entry of api-v<version>, committed, and
    the commit tagged. Refuses a breaking change unless declared (`breaking_change`), explained in
    the notes (`### Breaking`) and carried by a new major version."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        raise ContractError(f"version {version!r}: MAJOR.MINOR.PATCH, e.g. 1.1.0")
    new = (int(match[1]), int(match[2]), int(match[3]))
    tag = TAG_PREFIX + version
    dirty = _git(repo, "status", "--porcelain", "--", "protos").stdout.decode().strip()
    if dirty:
        raise ContractError(f"uncommitted changes under protos/ (a release tags what is committed):\n{dirty}")
    if _resolve(repo, f"refs/tags/{tag}") is not None:
        raise ContractError(f"tag {tag} exists already")
    notes = unreleased_notes(repo)
    if not notes:
        raise ContractError(f"{CHANGELOG}: the Unreleased section is empty: say what this release changes")
    last = latest_release(repo)
    if last is not None and new <= last.version:
        raise ContractError(f"{tag} is not newer than the last release {last.tag}")
    if breaking_change:
        # Asked for up front: a break is declared with its explanation, not discovered after it.
        if "### Breaking" not in notes:
            raise ContractError(f"{CHANGELOG}: a breaking release needs a `### Breaking` part in Unreleased")
        if last is not None and new[0] <= last.version[0]:
            raise ContractError(
                f"a breaking release needs a new major version (after {last.tag}: {last.version[0] + 1}.0.0)"
            )
    verdicts = check(repo)
    if not verdicts[0].ok:
        raise ContractError(f"buf lint fails; a release is lint-clean:\n{verdicts[0].output}")
    breaks = "\n".join(v.output for v in verdicts[1:] if not v.ok)
    if breaks and not breaking_change:
        raise ContractError(
            f"this breaks the contract of the last release, which installed clients use:\n{breaks}\n"
            "Prefer a compatible change (add, deprecate, reserve). If it must break: a `### Breaking` part in "
            f"{CHANGELOG}'s Unreleased section (what broke, what clients must do), a new major version, "
            "and --breaking."
        )
    # --breaking with nothing found is allowed: a change of meaning that buf cannot see is a break too.
    tree = _resolve(repo, f"HEAD:{CONTRACT_DIR}")
    day = (today or date.today()).isoformat()
    entry = f"## {tag} — {day}\n\nContract: `{CONTRACT_DIR}` at git tree `{tree}`.\n\n{notes}\n"
    text = (repo / CHANGELOG).read_text()
    head, rest = text.split(_UNRELEASED, 1)
    after = rest.split("\n## ", 1)
    older = "\n## " + after[1] if len(after) == 2 else ""
    (repo / CHANGELOG).write_text(f"{head}{_UNRELEASED}\n\n{entry}{older}")
    for argv in (
        ("commit", "--quiet", "-m", f"API release {tag}", "--", CHANGELOG),
        ("tag", "--annotate", tag, "-m", f"API release {tag}\n\n{notes}"),
    ):
        done = _git(repo, *argv)
        if done.returncode != 0:
            raise ContractError(f"git {' '.join(argv[:2])}: {done.stderr.decode().strip()}")
    released = latest_release(repo)
    assert released is not None and released.tag == tag
    return released


def main(args: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m launcher contract", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="lint, breaking changes and routes against the last release")
    cut = commands.add_parser("release", help="cut a release: tag the committed protos, date the changelog entry")
    cut.add_argument("version", help="MAJOR.MINOR.PATCH; the tag is api-v<version>")
    cut.add_argument("--breaking", action="store_true", help="accept the breaking changes the notes explain")
    opts = parser.parse_args(args)
    try:
        if opts.command == "release":
            made = cut_release(opts.version, breaking_change=opts.breaking)
            print(f"released {made.tag} ({CONTRACT_DIR} tree {made.tree}); publish it: git push origin {made.tag}")
            return 0
        verdicts = check()
    except ContractError as exc:
        print(f"[contract] {exc}", file=sys.stderr)
        return 1
    for verdict in verdicts:
        print(f"{verdict.name}: {'ok' if verdict.ok else 'FAILED'}")
        if not verdict.ok:
            print(verdict.output)
    return 0 if all(v.ok for v in verdicts) else 1
