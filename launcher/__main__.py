"""`python3 -m launcher <command>`: the one entry point behind the Makefile.

    setup          venv + pinned deps, stubs, dev keys, Postgres, Redis and Prometheus (installed if
                   missing; PROMETHEUS=0: no Prometheus)
    up             setup, then the whole mesh on fixed ports until Ctrl-C / SIGTERM
    test [ARGS]    setup, then pytest ARGS inside the venv (exit code = pytest's)
    bench [ARGS]   setup, then the hot-reads benchmark (python -m bench ARGS; installs h2load if missing)
    capacity       the capacity model from the bench's figures (python -m bench.capacity [ARGS])
    load [ARGS]    setup, then Locust's user journeys headless against a mesh of its own (--attach:
                   the running `make up`); results under .run/load/<time>/, exit 1 on any failure
    seed [USERS]   SPEC §11's volume (USERS users, 10,000) into the databases of the running `make up`
    lint           ruff check + mypy
    protos         regenerate the gRPC stubs into gen/
    contract ARGS  the API contract: `check` (buf lint, buf breaking and routes against the last
                   release) or `release VERSION [--breaking]` (README: API contract)
    clean          remove generated files, logs and caches (keeps .venv, keys, Postgres state)

This module is imported by the machine's own python3 before the venv exists: it and
launcher.bootstrap use only the standard library; everything else is imported after the launcher
has re-executed itself inside .venv.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from launcher.bootstrap import REPO, SetupError, ensure_venv, in_venv, log, reexec_in_venv

if TYPE_CHECKING:
    from pathlib import Path

    from launcher.infra import Infra
    from launcher.stack import Stack

USAGE = __doc__.split("\n\n")[1] if __doc__ else ""


def _env_flag(name: str, default: bool = True) -> bool:
    raw = os.environ.get(name, "")
    return default if not raw else raw.lower() not in ("0", "false", "no", "off")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SetupError(f"{name}={raw!r} is not an integer") from None


class Prepared:
    """What set-up decided, for the commands that run the mesh."""

    def __init__(self) -> None:
        from launcher import infra, protos
        from launcher.keys import ensure_dev_keys

        if protos.is_stale():
            log("generating gRPC stubs (protos changed)")
            protos.generate()
        self.keys = ensure_dev_keys()
        self.infra = infra.ensure(install=True)
        # PROMETHEUS=0: neither installed nor started.
        self.prometheus: str | None = None
        if _env_flag("PROMETHEUS"):
            from launcher import prometheus

            try:
                self.prometheus = prometheus.ensure_installed()
            except SetupError as exc:
                raise SetupError(f"{exc} (or set PROMETHEUS=0 to go without Prometheus)") from None
        # PgBouncer (launcher/pgbouncer.py): PGBOUNCER=1 puts it in front of `make up`'s primary, and
        # the tests run the database paths through it, so set-up installs Debian's package.
        from launcher import pgbouncer
        from launcher.bootstrap import Apt

        if pgbouncer.find() is None:
            log("installing PgBouncer (apt-get install -y pgbouncer)")
            Apt.install("pgbouncer")
        self.pgbouncer = pgbouncer.find()


def cmd_setup(args: Sequence[str]) -> int:
    prepared = Prepared()
    pg = prepared.infra.postgres
    print(f"venv      {REPO / '.venv'}")
    print(f"postgres  {pg.host}:{pg.port} (user {pg.user}{', password set' if pg.password else ''})")
    print(f"replica   {_replica_line(prepared.infra)}")
    print(f"redis     {prepared.infra.redis_url}")
    print(f"jwt keys  {prepared.keys.private.parent}")
    print(f"mesh CA   {prepared.keys.mesh_ca}  (operator certificate: {prepared.keys.operator})")
    print(f"prometheus {prepared.prometheus or 'not installed (PROMETHEUS=0)'}")
    print(f"pgbouncer {prepared.pgbouncer or 'not installed'}")
    return 0


def _replica_line(infra: Infra) -> str:
    if infra.replica is None:
        return "none (POSTGRES_REPLICA=0, or a primary on another machine): services read from the primary"
    from pathlib import Path

    from launcher import standby

    asked = Path(os.environ.get("POSTGRES_REPLICA_DIR") or standby.DEFAULT_DATA_DIR)
    data_dir, log_file = standby.locations(infra.replica.port, asked)
    return (
        f"{infra.replica.host}:{infra.replica.port} (streaming hot standby of :{infra.postgres.port}; "
        f"data {data_dir}, log {log_file})"
    )


def cmd_protos(args: Sequence[str]) -> int:
    from launcher import protos

    protos.main()
    return 0


def cmd_lint(args: Sequence[str]) -> int:
    from launcher import protos

    if protos.is_stale():
        protos.generate()
    bin_dir = os.path.dirname(sys.executable)
    targets = [d for d in ("launcher", "services", "gateway", "bench", "loadtest", "tests") if (REPO / d).is_dir()]
    ruff = subprocess.call([os.path.join(bin_dir, "ruff"), "check", *targets], cwd=REPO)
    # --explicit-package-bases: test folders without __init__.py may each have a conftest.py.
    mypy = subprocess.call([os.path.join(bin_dir, "mypy"), "--explicit-package-bases", *targets], cwd=REPO)
    return ruff or mypy


def cmd_contract(args: Sequence[str]) -> int:
    from launcher import contract

    return contract.main(args)


def _forward_signals_to(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM/SIGHUP to the launcher become SIGTERM to pytest, which tests/conftest.py turns into
    KeyboardInterrupt: fixture teardowns run and the stack is stopped. (Not SIGINT: a shell starts
    background jobs with SIGINT ignored, and pytest would inherit that.) Ctrl-C in a terminal
    already reaches both (same process group)."""

    def forward(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)


def test_runs(args: Sequence[str]) -> list[list[str]]:
    """The pytest argument lists of `make test ARGS`. The whole suite (no test paths, no -k or -m
    in ARGS) is two runs: everything but the `alone` tests in parallel, then those in one process
    with the machine to themselves — they assert latency bounds that three test processes sharing
    two cores would blur (tests/netns). A chosen selection is one run, as asked."""
    selects = any(
        a.startswith(("-k", "-m", "tests")) or a.endswith(".py") or "::" in a or "/" in a for a in args
    )
    if selects:
        return [list(args)]
    return [[*args, "-m", "not alone"], [*args, "-m", "alone", "-n", "0"]]


def cmd_test(args: Sequence[str]) -> int:
    prepared = Prepared()
    env = dict(os.environ)
    env.update(prepared.infra.env())
    env["JWT_KEYS_DIR"] = str(prepared.keys.private.parent)
    codes = [_pytest(run, env) for run in test_runs(args)]
    return next((code for code in codes if code != 0), 0)


def _pytest(args: Sequence[str], env: Mapping[str, str]) -> int:
    argv = [sys.executable, "-m", "pytest", *args]
    log("$ " + " ".join(argv))
    proc = subprocess.Popen(argv, cwd=REPO, env=env)
    _forward_signals_to(proc)
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            continue  # pytest got the same SIGINT: wait for its teardown
    if code == 5:
        print(
            "\n[test] FAILED: pytest collected no tests (exit code 5). A test run that runs nothing is "
            "not a pass: check the paths / -k expression.",
            file=sys.stderr,
        )
        return 5
    return code


def cmd_bench(args: Sequence[str]) -> int:
    prepared = Prepared()
    env = dict(os.environ)
    env.update(prepared.infra.env())
    argv = [sys.executable, "-m", "bench", *args]
    log("$ " + " ".join(argv))
    return subprocess.call(argv, cwd=REPO, env=env)


def cmd_capacity(args: Sequence[str]) -> int:
    """Arithmetic only (no databases, no mesh): the venv is enough."""
    return subprocess.call([sys.executable, "-m", "bench.capacity", *args], cwd=REPO)


LOAD_LEAD_SECONDS = 1  # the own stack's CAPSULE_MIN_UNLOCK_LEAD_SECONDS: capsules open within a run


def cmd_load(args: Sequence[str]) -> int:
    """Locust's user journeys (loadtest/journeys.py) headless, as a subprocess (gevent monkeypatches
    whatever imports it). Options of our own come first; every other argument goes to Locust as it
    is (`--master --expect-workers 2`, `--loglevel DEBUG`). With `--worker` nothing is started: the
    process joins a master (`--master-host`) and runs the users it hands out."""
    import argparse
    from datetime import datetime

    parser = argparse.ArgumentParser(prog="make load ARGS=...", description=cmd_load.__doc__)
    parser.add_argument("--attach", action="store_true", help="the running `make up` (GATEWAY_PORT, 8080)")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=10.0)
    parser.add_argument("--run-time", default="30s")
    parser.add_argument(
        "--capsule-lead",
        type=float,
        default=None,
        help=f"seconds to unlock (default: {LOAD_LEAD_SECONDS + 1} on the own stack, 65 attached: SPEC's 1 minute)",
    )
    opts, locust_args = parser.parse_known_args(args)
    from loadtest.command import headless_argv, locust_argv

    if "--worker" in locust_args:
        argv = locust_argv(*locust_args)
        log("$ " + " ".join(argv))
        return _run_forwarding_signals(argv)

    run_dir = REPO / ".run" / "load" / datetime.now().strftime("%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    lead = opts.capsule_lead if opts.capsule_lead is not None else (65.0 if opts.attach else LOAD_LEAD_SECONDS + 1.0)

    def run_locust(host: str) -> int:
        argv = headless_argv(
            host,
            users=opts.users,
            spawn_rate=opts.spawn_rate,
            run_time=opts.run_time,
            csv_prefix=run_dir / "locust",
            capsule_lead=lead,
            extra=tuple(locust_args),
        )
        log("$ " + " ".join(argv))
        code = _run_forwarding_signals(argv)
        return _load_report(run_dir, code)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    if opts.attach:
        from launcher.process import http_ok

        host = f"http://127.0.0.1:{_env_int('GATEWAY_PORT', 8080)}"
        if not http_ok(f"{host}/readyz"):
            raise SetupError(f"--attach: no gateway answers on {host} (start `make up`)")
        log(f"attached to {host}: its rate limits apply (README: Load generator)")
        return run_locust(host)

    from launcher.stack import Stack, StackSettings

    prepared = Prepared()
    settings = StackSettings.for_tests(
        prepared.infra,
        prepared.keys,
        work_dir=run_dir / "stack",
        log_level="WARNING",
        service_env={"CAPSULE_MIN_UNLOCK_LEAD_SECONDS": str(LOAD_LEAD_SECONDS)},
    )
    log("starting a mesh of its own (free ports, its own databases, raised rate limits)")
    try:
        with Stack(settings) as stack:
            log(f"mesh up: gateway {stack.gateway_url}, logs in {stack.log_dir}")
            return run_locust(stack.gateway_url)
    except KeyboardInterrupt:
        log("interrupted; the mesh is stopped")
        return 130


def _run_forwarding_signals(argv: Sequence[str]) -> int:
    proc = subprocess.Popen(argv, cwd=REPO)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached Locust too (same process group); SIGTERM to us is passed on.
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


def _load_report(run_dir: Path, code: int) -> int:
    from loadtest import report

    prefix = run_dir / "locust"
    try:
        rows = report.read_stats(prefix)
    except (OSError, KeyError, ValueError) as exc:
        print(f"[load] no statistics from Locust ({exc}); exit code {code}", file=sys.stderr)
        return code or 1
    total = report.aggregate(rows)
    # Locust has printed its own table (per step and percentiles): the verdict, and where it is.
    print(report.summary(total, report.read_failures(prefix)))
    missing = report.missing_steps(rows)
    print(f"results: {prefix}_*.csv")
    if total.failures or not total.requests:
        print(f"[load] FAILED: {total.failures} of {total.requests} requests failed", file=sys.stderr)
        return code or 1
    if missing:
        print(f"[load] note: steps not reached in this run: {', '.join(missing)}")
    return code


def cmd_seed(args: Sequence[str]) -> int:
    """Seed `make up`'s databases (migrated when it started) with bench/seed.py's data set: users
    pf1…pfN (password "seeded password"), their connections, recipients and capsules; skipped
    where it is there already. Rows go to the primary by SQL, so the services' read-your-writes
    does not know them: this waits until the standby has replayed them before it returns."""
    import asyncio

    from bench.replicas import CatchUpTimeout, replayed
    from bench.seed import Volume, seed_and_describe
    from mesh.topology import SERVICES

    prepared = Prepared()
    try:
        volume = Volume(int(args[0]) if args else 10_000)
    except ValueError as exc:
        raise SetupError(f"seed: {exc}") from None
    pg = prepared.infra.postgres
    dsns = {spec.name: pg.dsn(spec.database) for spec in SERVICES}
    print(seed_and_describe(dsns, volume))
    if prepared.infra.replica is not None:
        replica = prepared.infra.replica
        try:
            position = asyncio.run(replayed(pg, [replica], deadline=time.monotonic() + 120, poll=0.1))
        except CatchUpTimeout as exc:
            raise SetupError(str(exc)) from None
        print(f"standby   :{replica.port} has replayed the seed (up to {position})")
    return 0


def cmd_up(args: Sequence[str]) -> int:
    import importlib.util

    from launcher.process import StartupError, port_open
    from launcher.stack import Stack, StackSettings
    from mesh.topology import SERVICES

    prepared = Prepared()
    # Services and gateway are written in parallel issues: start what exists, say what does not.
    services = tuple(s for s in SERVICES if importlib.util.find_spec(f"{s.module}.__main__") is not None)
    for missing in sorted({s.name for s in SERVICES} - {s.name for s in services}):
        log(f"WARNING: service {missing!r} is not written yet: not started")
    with_gateway = importlib.util.find_spec("gateway.__main__") is not None
    if not with_gateway:
        log("WARNING: the gateway is not written yet: not started")
    settings = StackSettings(
        infra=prepared.infra,
        keys=prepared.keys,
        gateway_port=_env_int("GATEWAY_PORT", 8080),
        envoy_port=_env_int("ENVOY_PORT", 10000),
        envoy_admin_port=_env_int("ENVOY_ADMIN_PORT", 9901),
        envoy_concurrency=_env_int("ENVOY_CONCURRENCY", 1),
        # CONTROL_PLANE=0: Envoy's static bootstrap instead of the xDS control plane (fallback).
        control_plane=os.environ.get("CONTROL_PLANE", "1") not in ("0", "false", "no", "off"),
        # GATEWAY_PROXYLESS=0: the gateway calls the services through Envoy, not as an xDS client.
        gateway_proxyless=os.environ.get("GATEWAY_PROXYLESS", "1") not in ("0", "false", "no", "off"),
        control_plane_port=_env_int("CONTROL_PLANE_PORT", 18000),
        control_plane_admin_port=_env_int("CONTROL_PLANE_ADMIN_PORT", 18001),
        services=services,
        instances={s.name: _env_int(f"{s.name.upper()}_INSTANCES", s.instances) for s in services},
        log_level=os.environ.get("LOG_LEVEL") or "INFO",
        with_gateway=with_gateway,
        # Mutual TLS on every internal hop; MESH_PLAINTEXT=1 is the explicit development switch.
        mesh_tls=os.environ.get("MESH_PLAINTEXT", "") != "1",
        # PROMETHEUS=0: no Prometheus (it needs the control plane: its targets come from there).
        prometheus=prepared.prometheus is not None and _env_flag("CONTROL_PLANE"),
        prometheus_port=_env_int("PROMETHEUS_PORT", 9090),
    )
    if prepared.prometheus is not None and not settings.control_plane:
        log("WARNING: CONTROL_PLANE=0: Prometheus not started (its targets come from the control plane)")
    ports = {"GATEWAY_PORT": settings.gateway_port, "ENVOY_PORT": settings.envoy_port}
    ports["ENVOY_ADMIN_PORT"] = settings.envoy_admin_port
    if settings.control_plane:
        ports["CONTROL_PLANE_PORT"] = settings.control_plane_port
        ports["CONTROL_PLANE_ADMIN_PORT"] = settings.control_plane_admin_port
    if settings.prometheus:
        ports["PROMETHEUS_PORT"] = settings.prometheus_port
    busy = [f"{name}={port}" for name, port in ports.items() if port_open(settings.host, port)]
    if busy:
        hint = "another `make up`?"
        if "PROMETHEUS_PORT" in " ".join(busy):
            # Debian's package runs a system Prometheus on :9090 where an init system starts it.
            hint += " a system Prometheus (`service prometheus stop`)? PROMETHEUS=0 skips ours"
        raise SetupError(f"ports already in use: {', '.join(busy)} ({hint}); set other values")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly, SIGINT included: a shell starts background jobs with SIGINT ignored,
    # and Python would keep it so.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    stack = Stack(settings)
    code = 0
    try:
        log("starting the mesh (migrations, control plane, services, Envoy, gateway, Prometheus)")
        stack.start()
        _print_banner(stack)
        reported: set[str] = set()
        while True:
            time.sleep(1.0)
            _report_exits(stack, reported)
            # Certificates live 24 h: each is issued again at half its life (processes reload).
            for workload in stack.renew_due_certificates():
                log(f"renewed the certificate of {workload}")
    except KeyboardInterrupt:
        log("stopping")
    except StartupError as exc:
        log(f"ERROR: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        log(f"stopped; logs in {stack.log_dir}")
    return code


def _report_exits(stack: Stack, reported: set[str]) -> None:
    procs = [inst.process for insts in stack.instances.values() for inst in insts]
    procs += [p for p in (stack.control_plane, stack.envoy, stack.gateway, stack.prometheus) if p is not None]
    for proc in procs:
        if proc.returncode is not None and proc.name not in reported:
            reported.add(proc.name)
            log(f"WARNING: {proc.name} exited with code {proc.returncode}; see {proc.log_path}")


def _print_banner(stack: Stack) -> None:
    lines = ["", "capsule-mesh is up", ""]
    if stack.gateway is not None:
        lines.append(f"  gateway (HTTP/JSON)  {stack.gateway_url}")
    lines.append(f"  Envoy (gRPC, h2c)    {stack.envoy_grpc}")
    lines.append(f"  Envoy admin          {stack.envoy_admin_url}")
    if stack.settings.control_plane:
        cp = stack.control_plane_target
        lines.append(f"  control plane (xDS)  {cp}  admin {stack.control_plane_admin_url}/status")
    for insts in stack.instances.values():
        for inst in insts:
            lines.append(f"  {inst.name:<20} gRPC {inst.grpc_address}  admin http://{inst.admin_address}")
    if stack.prometheus is not None:
        lines.append(
            f"  Prometheus           {stack.prometheus_url}/targets  "
            f"(targets from {stack.control_plane_admin_url}/sd/prometheus)"
        )
    replica = stack.settings.infra.replica
    if replica is not None and stack.settings.read_replica:
        primary = stack.settings.infra.postgres
        lines.append(
            f"  Postgres standby     {replica.host}:{replica.port}  (reads that may lag; primary :{primary.port})"
        )
    else:
        lines.append("  Postgres standby     none: every read goes to the primary")
    lines.append(f"  logs                 {stack.log_dir}/")
    lines.append("")
    if stack.gateway is not None:
        lines.append("  try:")
        lines.append(f"    curl -s -X POST {stack.gateway_url}/v1/auth:signup -H 'content-type: application/json' \\")
        lines.append(
            '      -d \'{"email":"ada@example.com","username":"ada","password":"correct horse battery",'
            '"firstName":"Ada","lastName":"Lovelace"}\''
        )
    lines.append(f"    {REPO / '.venv/bin/grpcurl'} {' '.join(stack.grpcurl_args())} {stack.envoy_grpc} list")
    lines.append("")
    lines.append("  Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def cmd_clean(args: Sequence[str]) -> int:
    """Generated files, logs and caches. Keeps .venv, .run/keys and .run/state (Postgres password)."""
    targets = [REPO / "gen", REPO / ".run" / "logs", REPO / ".run" / "test-stacks"]
    targets += [REPO / n for n in (".pytest_cache", ".mypy_cache", ".ruff_cache", "build")]
    targets += list((REPO / ".run").glob("envoy-*.json"))
    targets += list((REPO / ".run").glob("prometheus-*"))  # Prometheus's data of `make up` (metrics only)
    targets += list(REPO.glob("*.egg-info"))
    for top in ("launcher", "services", "gateway", "tests", "bench", "loadtest"):
        if (REPO / top).is_dir():
            targets += list((REPO / top).rglob("__pycache__"))
    for path in targets:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    print(f"removed generated files, logs and caches under {REPO}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "setup": cmd_setup,
    "up": cmd_up,
    "test": cmd_test,
    "bench": cmd_bench,
    "capacity": cmd_capacity,
    "seed": cmd_seed,
    "load": cmd_load,
    "lint": cmd_lint,
    "protos": cmd_protos,
    "contract": cmd_contract,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else ""
    if command == "clean":
        return cmd_clean(args[1:])
    if command not in COMMANDS:
        print(f"usage: python3 -m launcher <command>\n\n{USAGE}", file=sys.stderr)
        return 0 if command in ("help", "-h", "--help") else 2
    try:
        ensure_venv()
        if not in_venv():
            reexec_in_venv(args)  # does not return
        return COMMANDS[command](args[1:])
    except SetupError as exc:
        print(f"[setup] ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
