"""A real Prometheus for the mesh: Debian's `prometheus` binary, its targets from the control plane.

    binary = prometheus.ensure_installed()          # set-up: apt-get install prometheus if missing
    path = prometheus.write_config(run_dir, sd_url)  # prometheus.yml: one http_sd_configs job
    proc = prometheus.process(binary, path, listen="127.0.0.1:9090", run_dir=..., log_path=...)

Nothing in the configuration names a process of the mesh: Prometheus asks the control plane's
admin port (GET /sd/prometheus) which targets exist — every instance holding a lease (its admin
port), plus the gateway, Envoy's admin (/stats/prometheus) and the control plane itself — every
`SD_REFRESH_SECONDS`. A new instance is scraped from its registration on; one whose lease ends
leaves the answer at once and Prometheus's target list at its next refresh (Prometheus passes
discovery updates on at most every 5 s, its own fixed throttle: within ttl + 2 s + 5 s at worst).

Debian's package starts a system `prometheus` service on :9090 where an init system runs one.
`ensure_installed()` stops and disables it right after installing the package (the launcher's
Prometheus takes that port); a service that was there before set-up is left alone, and `make up`
refuses a busy port with a message saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from launcher.bootstrap import REPO, Apt, SetupError, log
from launcher.process import ManagedProcess, http_ok

DEFAULT_PORT = 9090
PACKAGE = "prometheus"
BINARIES = ("prometheus", "promtool")
DEBIAN_BIN = Path("/usr/bin")
# Short enough for a test to see a target come and go in seconds; cheap: a scrape of one of our
# processes costs about a millisecond of its CPU.
SCRAPE_INTERVAL_SECONDS = 2.0
# Below the interval: a scrape slower than that counts as failed (target down), not as two in flight.
SCRAPE_TIMEOUT_SECONDS = 1.5
# How often Prometheus asks the control plane for the target list.
SD_REFRESH_SECONDS = 2.0
# A development machine's history: two days are plenty, and bound the disk used.
RETENTION = "2d"
# Recording and alerting rules (observability/prometheus/rules; tests/observability/test_rules.py).
RULES_DIR = REPO / "observability" / "prometheus" / "rules"


def find(name: str) -> str | None:
    """The path of a Prometheus binary: on PATH, else where Debian puts it."""
    found = shutil.which(name)
    if found:
        return found
    debian = DEBIAN_BIN / name
    return str(debian) if debian.is_file() else None


def installed() -> bool:
    return all(find(name) for name in BINARIES)


def ensure_installed() -> str:
    """The prometheus binary, Debian's package installed first if it (or promtool) is missing."""
    if not installed():
        log("Prometheus is not installed: installing Debian's prometheus")
        Apt.install(PACKAGE)
        disable_system_service()
    binary = find("prometheus")
    if binary is None:
        raise SetupError(f"the {PACKAGE} package is installed but no prometheus binary was found")
    return binary


def disable_system_service() -> None:
    """Stop the service the package's scripts may have started, and keep it from starting at boot:
    the launcher runs its own Prometheus on 127.0.0.1:9090. Best effort, each step may not apply
    (no systemd in a container, policy-rc.d refused the start)."""
    if Path("/run/systemd/system").is_dir():
        steps = [["systemctl", "disable", "--now", f"{PACKAGE}.service"]]
    else:
        steps = [["service", PACKAGE, "stop"], ["update-rc.d", PACKAGE, "disable"]]
    for argv in steps:
        if shutil.which(argv[0]) is None:
            continue
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        outcome = "done" if result.returncode == 0 else f"exit code {result.returncode} (ignored)"
        log(f"$ {' '.join(argv)}: {outcome}")


def _seconds(value: float) -> str:
    """A Prometheus duration: whole milliseconds (2s, 1500ms)."""
    ms = round(value * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def render_config(
    sd_url: str,
    *,
    scrape_interval: float = SCRAPE_INTERVAL_SECONDS,
    scrape_timeout: float = SCRAPE_TIMEOUT_SECONDS,
    sd_refresh: float = SD_REFRESH_SECONDS,
) -> str:
    """prometheus.yml: one scrape job whose targets all come from the control plane (`sd_url`).
    Each discovered group carries its own `job` label (the service, gateway, envoy, control-plane),
    which Prometheus keeps over the job_name, and Envoy's its `__metrics_path__`."""
    if not 0 < scrape_timeout <= scrape_interval:
        raise ValueError(f"scrape timeout {scrape_timeout} s must be in (0, interval {scrape_interval} s]")
    return "\n".join(
        [
            "# Written by the launcher (launcher/prometheus.py) at every start: edits are lost.",
            "global:",
            f"  scrape_interval: {_seconds(scrape_interval)}",
            f"  scrape_timeout: {_seconds(scrape_timeout)}",
            f"  evaluation_interval: {_seconds(scrape_interval)}",
            # The rules compose's Prometheus evaluates too (promtool-tested in make test).
            "rule_files:",
            f"  - {json.dumps(str(RULES_DIR / '*.yml'))}",
            "scrape_configs:",
            "  - job_name: capsule-mesh",
            "    http_sd_configs:",
            f"      - url: {json.dumps(sd_url)}",
            f"        refresh_interval: {_seconds(sd_refresh)}",
            "",
        ]
    )


def write_config(run_dir: Path, sd_url: str, **timings: float) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "prometheus.yml"
    path.write_text(render_config(sd_url, **timings))
    return path


def argv(binary: str, config: Path, *, listen: str, data_dir: Path) -> list[str]:
    return [
        binary,
        f"--config.file={config}",
        f"--web.listen-address={listen}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={RETENTION}",
        "--log.level=warn",
    ]


def process(
    binary: str, config: Path, *, listen: str, run_dir: Path, log_path: Path, env: dict[str, str]
) -> ManagedProcess:
    """Prometheus as a managed process, ready once GET /-/ready answers 200 (its storage opened
    and its configuration loaded)."""
    return ManagedProcess(
        "prometheus",
        argv(binary, config, listen=listen, data_dir=run_dir / "data"),
        env=env,
        log_path=log_path,
        ready=lambda: http_ok(f"http://{listen}/-/ready"),
        cwd=run_dir,
    )
