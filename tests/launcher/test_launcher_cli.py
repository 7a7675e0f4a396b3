"""`python3 -m launcher`: usage, the bootstrap's stamps and .pth, and `test` refusing to call
"no tests collected" a pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import bootstrap
from launcher.bootstrap import REPO

pytestmark = pytest.mark.slow(7)  # scheduled first: see tests/conftest.py

# The interpreter the venv was made from: what `make` runs as `python3` before the venv exists.
BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")


def launcher(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != bootstrap.REEXEC_MARKER}
    return subprocess.run(
        [BASE_PYTHON, "-m", "launcher", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_usage() -> None:
    assert launcher("help").returncode == 0
    wrong = launcher("no-such-command")
    assert wrong.returncode == 2
    for command in ("setup", "up", "test", "lint", "protos", "clean"):
        assert command in wrong.stderr


def test_the_launcher_module_imports_with_the_standard_library_only() -> None:
    """Run with -I -S (no site-packages at all): what the system python3 can do before the venv."""
    code = "import launcher.__main__, launcher.bootstrap, launcher.infra; print('ok')"
    result = subprocess.run(
        [BASE_PYTHON, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_no_tests_collected_is_a_failure() -> None:
    result = launcher("test", "tests/launcher/test_launcher_cli.py", "-n", "0", "-k", "no_test_is_called_like_this")
    assert result.returncode == 5, result.stdout + result.stderr
    assert "collected no tests" in result.stderr
    assert "not a pass" in result.stderr


def test_deps_stamp_follows_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[project]\nname = 'x'\n")
    stamp = tmp_path / "stamp"
    monkeypatch.setattr(bootstrap, "PYPROJECT", pyproject)
    monkeypatch.setattr(bootstrap, "DEPS_STAMP", stamp)
    assert not bootstrap.deps_current()
    stamp.write_text(bootstrap.pyproject_hash() + "\n")
    assert bootstrap.deps_current()
    pyproject.write_text("[project]\nname = 'x'\ndependencies = ['y==1']\n")
    assert not bootstrap.deps_current()


def test_the_venv_sees_the_repository_and_the_stubs() -> None:
    assert bootstrap.in_venv()
    pth = bootstrap.site_packages() / bootstrap.PTH_NAME
    assert pth.read_text().split() == [str(REPO), str(REPO / "gen"), str(REPO / "envoy")]
    import importlib

    assert importlib.import_module("capsule.auth.v1.auth_pb2")  # from gen/
    assert importlib.import_module("mesh.topology")  # from the repository root
    assert importlib.import_module("controlplane")  # from envoy/ (not `envoy`: the xds-protos name)


def test_the_files_two_packages_both_ship_are_those_of_the_package_installed_last() -> None:
    """xds-protos and opentelemetry-proto write the same opentelemetry/proto modules: the venv must
    hold opentelemetry-proto's (bootstrap.LAST_INSTALLED), byte for byte as its RECORD lists them."""
    import base64
    import hashlib
    from importlib import metadata

    owner = metadata.distribution(bootstrap.LAST_INSTALLED)
    others = {str(f) for f in metadata.distribution("xds-protos").files or ()}
    shared = [f for f in owner.files or () if str(f) in others and f.hash is not None]
    assert shared, "the two packages no longer overlap: LAST_INSTALLED can go"
    for file in shared:
        assert file.hash is not None
        digest = hashlib.new(file.hash.mode, Path(file.locate()).read_bytes()).digest()
        found = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        assert found == file.hash.value, f"{file} is not {bootstrap.LAST_INSTALLED}'s"


def test_a_stalled_test_fails_on_the_suite_time_limit_instead_of_hanging(tmp_path: Path) -> None:
    """The suite's per-test limit (pyproject's `timeout`) turns a stall into a failure with the
    stalled test named; here with the limit lowered to 1 s for a test that waits forever."""
    stalled = tmp_path / "test_stalled.py"
    stalled.write_text("import asyncio\n\nasync def test_waits_forever():\n    await asyncio.Event().wait()\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(stalled), "-o", "timeout=1", "-n", "0", "-p", "no:cacheprovider",
         "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Timeout" in result.stdout and "test_waits_forever" in result.stdout, result.stdout


def test_the_whole_suite_runs_the_alone_tests_last_in_one_process() -> None:
    from launcher.__main__ import test_runs

    assert test_runs([]) == [["-m", "not alone"], ["-m", "alone", "-n", "0"]]
    assert test_runs(["-p", "no:cacheprovider"]) == [
        ["-p", "no:cacheprovider", "-m", "not alone"],
        ["-p", "no:cacheprovider", "-m", "alone", "-n", "0"],
    ]
    # A selection is run as asked, in one run.
    for chosen in (["tests/netns", "-n", "0"], ["-k", "faults"], ["-mslow"], ["tests/gateway/test_units.py::test_x"]):
        assert test_runs(chosen) == [chosen]
