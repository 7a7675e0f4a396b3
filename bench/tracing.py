"""What tracing costs: GET /v1/me through the gateway with tracing off, sampled at 1 % and at
100 %, in one run (issue 14).

    python -m bench.tracing [--seconds 10] [--warmup 2] [--clients 32]

Each mode gets a mesh of its own (launcher.stack, the bench's raised rate limits, one auth
instance), started with the standard OpenTelemetry variables every process reads
(services/common/tracing.py): off — none set, so nothing is instrumented; 1 % and 100 % —
OTEL_EXPORTER_OTLP_ENDPOINT naming bench.otlp_sink (a receiver that keeps nothing, started once for
the run: its own CPU is not the mesh's), OTEL_TRACES_SAMPLER=parentbased_traceidratio with the
ratio as OTEL_TRACES_SAMPLER_ARG. The gateway makes the sampling decision (it starts the trace),
the services follow it. h2load drives GET /v1/me over HTTP/1.1 (32 clients, one request in flight
each) after a warm-up run; CPU per request is read from /proc for the gateway, the auth instance
and Envoy. The three meshes run side by side and the measured runs alternate between them
(--rounds per mode; the run with the median CPU per request is shown), so every figure comes from
the same run, against the 'off' column as the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import h2load
from bench.cpu import CpuMeter, pid_of
from bench.getme import ok_getme_count, sign_up
from bench.mesh import BENCH_RATE_LIMITS
from launcher import infra as infra_mod
from launcher.keys import KeyPair, ensure_dev_keys
from launcher.process import ManagedProcess, free_port, port_open
from launcher.stack import Stack, StackSettings

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mode:
    name: str
    ratio: float | None  # None: tracing off

    def env(self, sink: str) -> dict[str, str]:
        if self.ratio is None:
            return {}
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink}",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": f"{self.ratio:g}",
        }


MODES = (Mode("off", None), Mode("sampled 1 %", 0.01), Mode("sampled 100 %", 1.0))


@dataclass
class Measured:
    mode: Mode
    result: h2load.Result
    cpu_us: dict[str, float]

    @property
    def mesh_us(self) -> float:
        return sum(self.cpu_us.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per mode, interleaved; medians shown")
    args = parser.parse_args()
    h2load.ensure_h2load()
    infra = infra_mod.ensure(install=True)
    keys = ensure_dev_keys()
    work_dir = REPO / ".run" / "bench-tracing"

    sink_address = f"127.0.0.1:{free_port()}"
    host, _, port = sink_address.rpartition(":")
    sink = ManagedProcess(
        "otlp-sink",
        [sys.executable, "-m", "bench.otlp_sink", sink_address],
        env=dict(os.environ),
        log_path=work_dir / "otlp-sink.log",
        ready=lambda: port_open(host, int(port)),
    )
    sink.start().wait_ready(30.0)
    runs: dict[Mode, list[Measured]] = {mode: [] for mode in MODES}
    try:
        with contextlib.ExitStack() as meshes:
            # Every mode's mesh runs for the whole measurement (idle ones cost all runs alike) and
            # the runs alternate between them, so drift of the machine does not favour a mode.
            targets = {
                mode: meshes.enter_context(Target.start(mode, infra, keys, work_dir, sink_address)) for mode in MODES
            }
            for target in targets.values():
                target.run(args.warmup, args.clients)
            for _ in range(args.rounds):
                for mode, target in targets.items():
                    runs[mode].append(target.measure(args.seconds, args.clients))
    finally:
        sink.stop()
    report(
        [median(mode, runs[mode]) for mode in MODES],
        args,
        (work_dir / "otlp-sink.log").read_text().strip().splitlines()[-1:],
    )


@dataclass
class Target:
    """One mode's mesh, a signed-up user and what to measure."""

    mode: Mode
    stack: Stack
    url: str
    options: dict[str, object]
    admins: list[str]
    pids: dict[str, int]

    @classmethod
    @contextlib.contextmanager
    def start(cls, mode: Mode, infra: infra_mod.Infra, keys: KeyPair, work_dir: Path, sink: str) -> Iterator[Target]:
        otel = mode.env(sink)
        settings = StackSettings.for_tests(
            infra,
            keys,
            work_dir=work_dir / mode.name.replace(" ", "-").replace("%", "pct"),
            log_level="WARNING",
            instances={"auth": 1},
            gateway_env={**BENCH_RATE_LIMITS, **otel},
            service_env=otel,
        )
        with Stack(settings) as stack:
            token = sign_up(stack.gateway_url)
            pids = {"gateway": pid_of(stack.gateway), "envoy": pid_of(stack.envoy)}
            pids.update({inst.name: pid_of(inst.process) for inst in stack.instances["auth"]})
            yield cls(
                mode,
                stack,
                f"{stack.gateway_url}/v1/me",
                {"headers": {"authorization": f"Bearer {token}"}, "http1": True},
                [inst.admin_address for inst in stack.instances["auth"]],
                pids,
            )

    def run(self, seconds: int, clients: int) -> h2load.Result:
        return h2load.run(self.mode.name, self.url, clients=clients, seconds=seconds, warmup=0, **self.options)  # type: ignore[arg-type]

    def measure(self, seconds: int, clients: int) -> Measured:
        before = ok_getme_count(self.admins)
        meter = CpuMeter(self.pids)
        result = self.run(seconds, clients)
        cpu = meter.per_request_us(result.succeeded)
        answered = ok_getme_count(self.admins) - before
        if result.failed or answered < result.succeeded:
            raise SystemExit(
                f"{self.mode.name}: {result.failed} failed; h2load saw {result.succeeded} OK, auth {answered}"
            )
        return Measured(self.mode, result, cpu)


def median(mode: Mode, runs: list[Measured]) -> Measured:
    """The run whose whole-mesh CPU per request is the median of the mode's runs."""
    ordered = sorted(runs, key=lambda m: m.mesh_us)
    return ordered[len(ordered) // 2]


def report(measured: list[Measured], args: argparse.Namespace, sink_summary: list[str]) -> None:
    off = measured[0]
    print()
    print(
        f"GET /v1/me through the gateway, {args.clients} clients, {args.seconds} s each after {args.warmup} s "
        f"warm-up, one mesh per mode, {args.rounds} interleaved runs each (the median shown); load from h2load "
        "on the same cores"
    )
    print(f"{'':<24}" + "".join(f"{m.mode.name:>16}" for m in measured))
    rows: list[tuple[str, list[str]]] = [
        ("req/s", [f"{m.result.requests_per_second:.0f}" for m in measured]),
        ("p50 ms", [f"{m.result.p50_ms:.2f}" for m in measured]),
        ("p99 ms", [f"{m.result.p99_ms:.2f}" for m in measured]),
        ("failed", [str(m.result.failed) for m in measured]),
        ("req/s vs off", [f"{m.result.requests_per_second / off.result.requests_per_second:.2f}" for m in measured]),
    ]
    for process in off.cpu_us:
        rows.append((f"CPU µs/req {process}", [f"{m.cpu_us.get(process, 0.0):.0f}" for m in measured]))
    rows.append(("CPU µs/req mesh", [f"{m.mesh_us:.0f}" for m in measured]))
    rows.append(("  more than off", [f"{m.mesh_us - off.mesh_us:+.0f}" for m in measured]))
    for label, values in rows:
        print(f"{label:<24}" + "".join(f"{v:>16}" for v in values))
    if sink_summary:
        print(f"\nOTLP receiver: {sink_summary[0]}")


if __name__ == "__main__":
    main()
