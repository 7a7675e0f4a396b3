"""The API contract (launcher/contract.py) with the real buf binary and real git: today's protos are
lint-clean and keep every promise of the last release, and each check catches what it is there
for, shown on scratch copies of protos/ that get one mistake each. No network: images come from
grpc_tools and the venv's googleapis."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from gateway.descriptors import http_bindings, load_services
from launcher import contract
from launcher.bootstrap import REPO
from mesh.topology import gateway_proto_modules

CONFIG = REPO / contract.BUF_CONFIG
COMMON = "capsule/common/v1/common.proto"
AUTH = "capsule/auth/v1/auth.proto"


@pytest.fixture(scope="module")
def current(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract.build_image(REPO / "protos", tmp_path_factory.mktemp("contract") / "current.binpb")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image of the last release's protos, read from git."""
    last = contract.latest_release()
    assert last is not None, f"{contract.CHANGELOG} names no release: the contract has no baseline"
    work = tmp_path_factory.mktemp("release")
    return contract.build_image(contract.release_protos(last, work), work / "release.binpb")


def scratch_image(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """An image of protos/ with one edit: `old` (found exactly once in `file`) becomes `new`."""
    root = tmp_path / "protos"
    shutil.copytree(REPO / "protos", root)
    path = root / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {file}: the test needs a new anchor"
    path.write_text(text.replace(old, new))
    return contract.build_image(root, tmp_path / "scratch.binpb")


# --- today's contract -----------------------------------------------------------------------------


def test_protos_are_lint_clean(current: Path) -> None:
    verdict = contract.lint(current, CONFIG)
    assert verdict.ok, f"buf lint (rules and exceptions: {contract.BUF_CONFIG}):\n{verdict.output}"


def test_nothing_breaks_what_the_last_release_published(current: Path, release: Path) -> None:
    for verdict in (
        contract.breaking(current, release, CONFIG),
        contract.removed_routes(current, release),
    ):
        assert verdict.ok, (
            f"{verdict.name} against {contract.latest_release()}: installed clients would break:\n{verdict.output}\n"
            "A deliberate break needs a release: README, 'API contract'."
        )


def test_the_only_comment_ignore_is_error_reasons_published_names() -> None:
    # A lint exception belongs in protos/buf.yaml's list with its reason; this one sits on its enum.
    found = {
        (str(path.relative_to(REPO / "protos")), rule)
        for path in (REPO / contract.CONTRACT_DIR).rglob("*.proto")
        for rule in re.findall(r"buf:lint:ignore (\w+)", path.read_text())
    }
    assert found == {(COMMON, "ENUM_VALUE_PREFIX")}


def test_the_routes_checked_are_those_the_gateway_serves(current: Path) -> None:
    served = http_bindings(load_services(gateway_proto_modules().split(",")))
    assert {(b.verb, b.template, b.rpc.path) for b in served} == {
        (r.verb, r.template, r.rpc) for r in contract.routes(current)
    }


# --- each check catches its mistake ----------------------------------------------------------------


def test_a_renamed_field_breaks(tmp_path: Path, release: Path) -> None:
    image = scratch_image(tmp_path, COMMON, "string avatar_url = 5;", "string picture_url = 5;")
    verdict = contract.breaking(image, release, CONFIG)
    assert not verdict.ok
    assert '"avatar_url"' in verdict.output, verdict.output


def test_a_renumbered_field_breaks(tmp_path: Path, release: Path) -> None:
    image = scratch_image(tmp_path, COMMON, "string avatar_url = 5;", "string avatar_url = 6;")
    verdict = contract.breaking(image, release, CONFIG)
    assert not verdict.ok
    assert 'field "5" with name "avatar_url"' in verdict.output, verdict.output


def test_a_changed_route_is_caught_by_the_route_check_not_by_buf(tmp_path: Path, release: Path) -> None:
    old = '{get: "/v1/usernames/{username}"}'
    image = scratch_image(tmp_path, AUTH, old, '{get: "/v1/users/{username}:check"}')
    # buf compares no option values: the route is not part of its rules.
    assert contract.breaking(image, release, CONFIG).ok
    verdict = contract.removed_routes(image, release)
    assert not verdict.ok
    assert "GET /v1/usernames/{username} → /capsule.auth.v1.AuthService/CheckUsername" in verdict.output


def test_a_lower_case_message_and_a_camel_case_field_fail_lint(tmp_path: Path) -> None:
    image = scratch_image(
        tmp_path,
        COMMON,
        "message CursorKey {",
        "message lower_case_thing {\n  string avatarUrl = 1;\n}\n\nmessage CursorKey {",
    )
    verdict = contract.lint(image, CONFIG)
    assert not verdict.ok
    assert "lower_case_thing" in verdict.output and "avatarUrl" in verdict.output, verdict.output


def test_the_enum_prefix_exception_covers_error_reason_only(tmp_path: Path) -> None:
    image = scratch_image(
        tmp_path,
        COMMON,
        "message CursorKey {",
        "enum Mood {\n  MOOD_UNSPECIFIED = 0;\n  HAPPY = 1;\n}\n\nmessage CursorKey {",
    )
    verdict = contract.lint(image, CONFIG)
    assert not verdict.ok
    assert 'Enum value name "HAPPY" should be prefixed with "MOOD_"' in verdict.output, verdict.output


# --- releases: the baseline moves only by the release command --------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A git repository of its own holding today's protos/ with a changelog of no release yet."""
    for var, value in (("NAME", "Contract Test"), ("EMAIL", "contract@test.invalid")):
        monkeypatch.setenv(f"GIT_AUTHOR_{var}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{var}", value)
    root = tmp_path / "repo"
    shutil.copytree(REPO / "protos", root / "protos")
    (root / contract.CHANGELOG).write_text("# API changelog\n\n## Unreleased\n\nThe first release.\n")
    git(root.parent, "init", "--quiet", "--initial-branch=main", str(root))
    commit(root, "today's protos")
    yield root


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)


def edit(repo: Path, relative: str, old: str, new: str) -> None:
    path = repo / relative
    path.write_text(path.read_text().replace(old, new, 1))


def test_a_breaking_change_passes_only_through_a_breaking_release(repo: Path) -> None:
    day = date(2026, 11, 30)
    first = contract.cut_release("1.0.0", breaking_change=False, repo=repo, today=day)
    assert first.tag == "api-v1.0.0"
    assert git(repo, "cat-file", "-t", "api-v1.0.0").strip() == "tag"  # annotated
    assert "## api-v1.0.0 — 2026-11-30" in (repo / contract.CHANGELOG).read_text()

    edit(repo, f"protos/{COMMON}", "string avatar_url = 5;", "string picture_url = 5;")
    edit(repo, contract.CHANGELOG, "## Unreleased\n", "## Unreleased\n\nRenamed avatar_url.\n")
    commit(repo, "rename a field")
    with pytest.raises(contract.ContractError, match="--breaking") as refused:
        contract.cut_release("1.1.0", breaking_change=False, repo=repo, today=day)
    assert '"avatar_url"' in str(refused.value)  # buf's own words on what broke
    with pytest.raises(contract.ContractError, match="### Breaking"):
        contract.cut_release("1.1.0", breaking_change=True, repo=repo, today=day)
    edit(repo, contract.CHANGELOG, "Renamed avatar_url.", "### Breaking\n\n- `avatar_url` is `picture_url`: read both.")
    commit(repo, "say what broke")
    with pytest.raises(contract.ContractError, match="new major version"):
        contract.cut_release("1.1.0", breaking_change=True, repo=repo, today=day)

    second = contract.cut_release("2.0.0", breaking_change=True, repo=repo, today=day)
    assert second.tag == "api-v2.0.0"
    assert all(v.ok for v in contract.check(repo))
    assert contract.unreleased_notes(repo) == ""
    assert "picture_url" in git(repo, "tag", "-n20", "api-v2.0.0")


def test_a_clone_without_the_release_tag_checks_its_tree_or_says_how_to_fetch_it(repo: Path, tmp_path: Path) -> None:
    contract.cut_release("1.0.0", breaking_change=False, repo=repo, today=date(2026, 11, 30))
    edit(repo, f"protos/{COMMON}", "string avatar_url = 5;", "string avatar_url = 5;\n  string bio = 6;")
    commit(repo, "a compatible change")
    # A whole history without the tag still has the release's tree, the same content by its id.
    tagless = tmp_path / "tagless"
    git(tmp_path, "clone", "--quiet", "--no-tags", f"file://{repo}", str(tagless))
    assert all(v.ok for v in contract.check(tagless))
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "--quiet", "--depth=1", "--no-tags", f"file://{repo}", str(shallow))
    with pytest.raises(contract.ContractError, match=re.escape("git fetch origin tag api-v1.0.0")):
        contract.check(shallow)
    # Fetching it as told makes the check whole again.
    git(shallow, "fetch", "--quiet", "--depth=1", "origin", "tag", "api-v1.0.0", "--no-tags")
    assert all(v.ok for v in contract.check(shallow))


def test_a_moved_release_tag_is_refused(repo: Path) -> None:
    contract.cut_release("1.0.0", breaking_change=False, repo=repo, today=date(2026, 11, 30))
    edit(repo, f"protos/{COMMON}", "string avatar_url = 5;", "string picture_url = 5;")
    commit(repo, "rename a field")
    git(repo, "tag", "--force", "--annotate", "api-v1.0.0", "-m", "moved")
    with pytest.raises(contract.ContractError, match="was moved"):
        contract.check(repo)
