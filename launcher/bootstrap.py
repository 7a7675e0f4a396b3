"""Set-up of the Python side, with the standard library only.

Runs under whatever `python3` the machine has (a fresh Debian: the system one) before any
dependency exists: creates `.venv`, installs the pinned dependencies of pyproject.toml into it
(skipped while a stamp of pyproject.toml is current), puts the repository and `gen/` on the
venv's path with a .pth file, then re-executes the launcher inside the venv.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
PYPROJECT = REPO / "pyproject.toml"
# Hash of the pyproject.toml the venv was last installed from.
DEPS_STAMP = VENV / ".capsule-mesh-deps"
PTH_NAME = "capsule_mesh.pth"
# Set in the environment of the re-executed launcher, so it never loops.
REEXEC_MARKER = "CAPSULE_MESH_IN_VENV"
MIN_PYTHON = (3, 11)


class SetupError(RuntimeError):
    """Set-up cannot continue; the message says why and what to do."""


def log(message: str) -> None:
    print(f"[setup] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], **kwargs: object) -> None:
    log("$ " + " ".join(argv))
    result = subprocess.run(argv, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise SetupError(f"command failed with exit code {result.returncode}: {' '.join(argv)}")


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --- Debian packages ---------------------------------------------------------------------------


class Apt:
    """apt-get, with `apt-get update` run at most once per launcher run: the flag lives in the
    environment, so it survives the launcher re-executing itself inside the venv."""

    UPDATED_MARKER = "CAPSULE_MESH_APT_UPDATED"

    @classmethod
    def install(cls, *packages: str) -> None:
        if shutil.which("apt-get") is None:
            raise SetupError(
                f"{', '.join(packages)} missing and this is not a Debian/Ubuntu machine (no apt-get): "
                "install them yourself, or point the launcher at existing servers (see README)"
            )
        if not is_root():
            raise SetupError(f"installing {', '.join(packages)} needs root: run as root or install them")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not os.environ.get(cls.UPDATED_MARKER):
            run(["apt-get", "update"], env=env)
            os.environ[cls.UPDATED_MARKER] = "1"
        run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env)


# --- the venv --------------------------------------------------------------------------------------


def pyproject_hash() -> str:
    return hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()


def deps_current() -> bool:
    return venv_usable() and DEPS_STAMP.exists() and DEPS_STAMP.read_text().strip() == pyproject_hash()


def venv_usable() -> bool:
    return VENV_PYTHON.exists() and (VENV / "bin" / "pip").exists()


def create_venv() -> None:
    if venv_usable():
        return
    if sys.version_info < MIN_PYTHON:
        raise SetupError(f"python3 is {sys.version.split()[0]}; capsule-mesh needs >= {'.'.join(map(str, MIN_PYTHON))}")
    # Debian splits the part of `venv` that installs pip (ensurepip) into python3-venv.
    if importlib.util.find_spec("ensurepip") is None:
        log("the venv module cannot install pip here (Debian's python3-venv is missing)")
        Apt.install("python3-venv")
    log(f"creating {VENV}")
    try:
        run([sys.executable, "-m", "venv", "--clear", str(VENV)])
    except SetupError:
        # Debian ships a stub ensurepip that refuses to run without python3-venv: install, retry.
        if shutil.which("apt-get") is None:
            raise
        log("venv creation failed; installing python3-venv and retrying")
        Apt.install("python3-venv")
        run([sys.executable, "-m", "venv", "--clear", str(VENV)])
    if not venv_usable():
        raise SetupError(f"{VENV} was created without pip; install python3-venv and delete {VENV}")


def site_packages() -> Path:
    out = subprocess.run(
        [str(VENV_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def pth_content() -> str:
    """Repository root, gen/ and envoy/ on the venv's sys.path: `import services`,
    `import capsule...`, `import controlplane` (envoy/controlplane: the repository's envoy/ folder
    holds the control plane package; the top-level name `envoy` itself is the xds-protos wheel's)."""
    return f"{REPO}\n{REPO / 'gen'}\n{REPO / 'envoy'}\n"


def write_pth() -> None:
    """Rewritten whenever its content changed (every launcher run checks), so existing venvs pick
    up new path entries without reinstalling."""
    content = pth_content()
    pth = site_packages() / PTH_NAME
    if not pth.exists() or pth.read_text() != content:
        pth.write_text(content)
        log(f"wrote {pth}")


def installer_pin() -> str:
    """The installer's requirement (`uv==x.y.z`), pinned in pyproject.toml with the rest."""
    import tomllib

    return str(tomllib.loads(PYPROJECT.read_text())["tool"]["capsule-mesh"]["installer"])


def install_deps() -> None:
    """uv installs the pinned dependencies (downloads in parallel: ~15 s on a fresh machine where
    pip takes 80+ s); pip installs uv itself, and everything when uv cannot be had."""
    if deps_current():
        return
    log("installing the pinned dependencies of pyproject.toml (project + dev extras)")
    # The stamp names the pyproject.toml that was installed: read before installing, so an edit
    # made meanwhile is installed by the next set-up rather than taken as done.
    installing = pyproject_hash()
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check"]
    uv = VENV / "bin" / "uv"
    try:
        run([*pip, "--quiet", installer_pin()], cwd=REPO)
        # --compile-bytecode, as pip does: otherwise every process of the first mesh compiles the
        # same modules at once (xds-protos alone is thousands), costing minutes of CPU.
        # --system-certs: the machine's CA store, as pip trusts it (a network whose proxy re-signs
        # TLS is trusted there, not in uv's built-in roots).
        install = ["pip", "install", "--compile-bytecode", "--system-certs", "--python", str(VENV_PYTHON)]
        run([str(uv), *install, "-e", f"{REPO}[dev]"], cwd=REPO)
        run([str(uv), *install, "--no-deps", "--reinstall-package", LAST_INSTALLED, pin(LAST_INSTALLED)], cwd=REPO)
    except SetupError as exc:
        log(f"{exc}; installing with pip instead")
        run([*pip, "-e", f"{REPO}[dev]"], cwd=REPO)
        run([*pip, "--no-deps", "--force-reinstall", pin(LAST_INSTALLED)], cwd=REPO)
    DEPS_STAMP.write_text(installing + "\n")


# xds-protos ships its own, older copy of OpenTelemetry's proto modules (opentelemetry/proto/…,
# for Envoy's tracer configuration); the two packages write the same files and the one installed
# last owns them. The OTLP exporter needs opentelemetry-proto's (InstrumentationScope), and Envoy's
# configuration reads them as well: it is installed again, last. (A venv that gained
# opentelemetry-proto after xds-protos had it right by chance; a fresh one did not.)
LAST_INSTALLED = "opentelemetry-proto"


def pin(package: str) -> str:
    """`package==version` as pyproject.toml pins it."""
    import tomllib

    for requirement in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        if requirement.split("==")[0].strip().lower() == package:
            return str(requirement)
    raise SetupError(f"{package} is not pinned in pyproject.toml")


def ensure_venv() -> None:
    create_venv()
    install_deps()
    write_pth()


def reexec_in_venv(argv: list[str]) -> None:
    """Replace this process by `.venv/bin/python -m launcher <argv>` (no return)."""
    env = dict(os.environ)
    env[REEXEC_MARKER] = "1"
    env.pop("PYTHONHOME", None)
    os.chdir(REPO)
    os.execve(str(VENV_PYTHON), [str(VENV_PYTHON), "-m", "launcher", *argv], env)
